"""vLLM as an engine of this runtime: our server stays the front (endpoints, keys, errors, metrics,
drain), and vLLM runs the model in a process of its own environment, whose pins differ from ours.

The process speaks the same messages as the builtin engine process (scheduler/worker/messages.py), over
the same two pipes, so EngineProcess watches, drains and fails it the same way:

- `spec`: what the vLLM process starts from.
- `launch`: the HTTP process's side: which interpreter, which environment, the process and its group.
- `worker`: the vLLM process's side (runs in vLLM's environment): admission, time limits, events.
- `params`: our sampling parameters and vLLM's outputs, translated both ways (no vLLM import).
- `choice`: which engine serves a model (`model.engine: auto`).
"""
