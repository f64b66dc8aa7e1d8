"""The engine in a process of its own, driven from the HTTP process through two pipes.

Why a process: a small model's forward pass is mostly Python, and so is serving HTTP. In one process
both want the one interpreter lock and each stalls the other, which on two cores cost a third of the
throughput. Apart, the engine process spends its lock on the model alone and the HTTP process streams
in parallel. Each step crosses the pipe once, as one message with every request's events.

It also makes a model version a unit that can be started beside another and ended cleanly (hot swap),
and an engine that crashes takes no HTTP connection with it unanswered.

- `parent`: the HTTP process's side, `EngineProcess` (the Scheduler's surface over the pipes, stall watch,
  kill, failing what was in flight when the engine dies).
- `child`: the engine process's side, `worker_main` (load, warm up, run the scheduler, answer commands).
- `messages`: what crosses the pipes, one typed message per kind, and the `WorkerSpec` the child starts from.
"""
