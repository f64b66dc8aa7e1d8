"""The policy pack: `pulumi preview --policy-pack infra/policy` (from infra/). The Pulumi CLI runs this
in the pack's own virtualenv (requirements.txt); the checks themselves are rules.py."""

import sys
from pathlib import Path

# rules.py and pack.py are imported as the `infra.policy` package, as the tests import them.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from infra.policy.pack import build_policies  # noqa: E402

PolicyPack(
    name="model-runtime-fleet", enforcement_level=EnforcementLevel.MANDATORY, policies=build_policies()
)
