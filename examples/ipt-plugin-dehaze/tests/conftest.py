# The IPT plugin test kit as a pytest plugin: gives the fixture `ipt_task_checker`.
pytest_plugins = ["ipt.testing"]
