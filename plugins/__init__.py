"""Built-in task plugins (sr, denoise, derain, deblur), each registered through an ``ipt`` entry point."""
