"""The operator commands: health checks over SSH, Roo Code settings, the preemption watcher, inventory readers."""
