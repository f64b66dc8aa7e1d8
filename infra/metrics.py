"""Where the instances publish their metrics (the cloud_metrics role, configured through the user
data) and what the auto scaling group's target tracking reads: one namespace, one dimension naming
the fleet (the Pulumi project and stack), the same for both."""

METRICS_NAMESPACE = "ModelRuntime"
FLEET_DIMENSION = "Fleet"
