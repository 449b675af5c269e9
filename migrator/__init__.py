"""migrator: moves one tenant from a self-hosted install to the cloud, as a resumable, checkpointed playbook."""

from migrator.errors import ExitCode, MigratorError
from migrator.step import CheckResult, Estimate, Params, PlanResult, Step, StepContext

__all__ = ["CheckResult", "Estimate", "ExitCode", "MigratorError", "Params", "PlanResult", "Step", "StepContext"]
__version__ = "0.1.0"
