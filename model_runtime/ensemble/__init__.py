"""Ensembles: several models served as one name, plugged into the runtime (plugin.py) without the
engine, scheduler or server knowing them.

- average / stack: token level. The EnsembleEngine (engine.py) runs its members in the same scheduler
  step and combines their next-token distributions (combine.py) before the scheduler samples once.
- vote: output level. Each member answers alone (routed sequences), and the request hook (voting.py)
  tallies their answers (vote.py).
- stacking.py fits the combination weights on validation outputs; evaluate.py measures candidates and
  combinations and chooses; artifact.py writes and pushes the ensemble folder described by spec.py.
"""
