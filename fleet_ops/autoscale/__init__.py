"""The metal fleet's autoscaler: signals read from Prometheus (signals.py), a decision with bounds,
cooldowns and hysteresis (policy.py), carried out by the scale.yml run operators use, under the fleet's
lock (actuator.py), in a loop that logs and exports every decision (service.py)."""
