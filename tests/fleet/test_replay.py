"""Recorded workflow histories replay against the current workflow code: a change that would break running
campaigns (a non-deterministic edit: another order of activities, timers or signals) fails here.

The histories in ``tests/fleet/histories/`` were recorded from a real campaign on the dev server by
``python -m tests.fleet.record_histories``: a campaign of a canary and one more tenant (each file is named by its
workflow id: replay needs it), the canary waiting for its daypart with a durable timer and migrated, the other
rolled back after its smoke test failed. When a deliberate change of the workflows makes them obsolete, keep them
for the version still running (patching with ``workflow.patched``) and record new ones beside them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from migrator.fleet.payloads import TenantInput, TenantResult
from migrator.fleet.workflows import CampaignWorkflow, TenantWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_recorded_history_replays_against_the_current_workflow_code(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    replayer = Replayer(workflows=[CampaignWorkflow, TenantWorkflow])
    result = asyncio.run(replayer.replay_workflow(history, raise_on_replay_failure=False))
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def test_there_are_histories_of_a_campaign_and_of_tenants_to_replay() -> None:
    kinds = {json.loads(p.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]
             for p in HISTORIES}
    assert kinds == {"MigratorCampaign", "MigratorTenant"}


@workflow.defn(name="MigratorTenant")
class _TenantThatSleepsFirst(TenantWorkflow):
    """The tenant workflow with one edit that would break running campaigns: a timer before anything else."""

    @workflow.run
    async def run(self, inp: TenantInput) -> TenantResult:
        await workflow.sleep(1)
        return await super().run(inp)


@pytest.mark.parametrize("path", [p for p in HISTORIES if "--" in p.stem], ids=lambda p: p.stem)
def test_a_non_deterministic_edit_fails_the_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    replayer = Replayer(workflows=[CampaignWorkflow, _TenantThatSleepsFirst])
    result = asyncio.run(replayer.replay_workflow(history, raise_on_replay_failure=False))
    assert result.replay_failure is not None
