"""Put tasks fine-tuned on a frozen body back into a multi-task model (the paper's per-task fine-tuning, shipped as
one model): ``ipt merge BASE DONOR -o OUT``.

A task fine-tuned with ``ipt train --init-from BASE --freeze body`` changes only its head, tail and task embedding,
so those parts can replace the base model's without touching any other task. The bodies must be bit-identical;
otherwise the other tasks' heads would meet a body they were not trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ipt.core.model.ipt import IPT


def merge_tasks(base: IPT, donor: IPT, tasks: Sequence[str] | None = None) -> list[str]:
    """Copy the head, tail, task embedding and spec of ``tasks`` (default: all of ``donor``'s) from ``donor`` into
    ``base`` in place; returns the merged task names.

    Raises ``ValueError`` when the architectures differ, when a task is not in ``donor``, or when the bodies are not
    identical (the donor was not fine-tuned with ``--freeze body`` from this base).
    """
    if base.config != donor.config:
        raise ValueError("the two models have different architectures (config.json 'architecture' differs)")
    names = list(tasks) if tasks else donor.task_names
    missing = [t for t in names if t not in donor.task_names]
    if missing:
        raise ValueError(f"task(s) {', '.join(missing)} not in the fine-tuned model (it has "
                         f"{', '.join(donor.task_names)})")
    donor_body = donor.body.state_dict()
    for key, value in base.body.state_dict().items():
        if not torch.equal(value, donor_body[key]):
            raise ValueError(f"the bodies differ (first at body.{key}): merge only tasks fine-tuned with "
                             "--freeze body from this base model")
    for name in names:
        spec = donor.spec(name)
        if name in base.task_names:  # same place in the task list; the donor's spec (plugin version) wins
            base.task_specs[name] = spec
        else:
            base.add_task(spec)
        base.heads[name].load_state_dict(donor.heads[name].state_dict())
        base.tails[name].load_state_dict(donor.tails[name].state_dict())
        with torch.no_grad():
            base.task_embed[name].copy_(donor.task_embed[name])
    return names
