"""A sharded job's plan, as the worker that picks the job up records it in the job's shard hash
(app/store/leases.py): per set, where its input is and its shards' candidate ranges. Shards are named
``"<set>:<k>"`` (``ShardId``)."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel

SETS = ("real", "generated")


class ShardId(NamedTuple):
    """Shard ``k`` of set ``set_name``; ``str()`` is its name in the hash, ``parse`` reads it back."""

    set_name: str
    k: int

    def __str__(self) -> str:
        return f"{self.set_name}:{self.k}"

    @classmethod
    def parse(cls, name: str) -> ShardId:
        set_name, k = name.split(":")
        return cls(set_name, int(k))


class SetPlan(BaseModel):
    """One set: its input as the planner saw it (``path``), or its place in the job's staging folder
    (``relative``) where every worker finds it; its shards as (start, stop) candidate ranges (none: the
    set is saved statistics, which the merge reads whole)."""

    path: str
    shards: list[tuple[int, int]]
    relative: str | None = None


class ShardPlan(BaseModel):
    real: SetPlan
    generated: SetPlan

    def set(self, set_name: str) -> SetPlan:
        return getattr(self, set_name)

    def shard_ids(self) -> list[ShardId]:
        """Every shard of the job, in shard order: the real set's, then the generated set's."""
        return [ShardId(s, k) for s in SETS for k in range(len(self.set(s).shards))]

    def range(self, shard: ShardId) -> tuple[int, int]:
        return self.set(shard.set_name).shards[shard.k]

    def images(self) -> int:
        """Candidates over all shards of both sets."""
        return sum(b - a for s in SETS for a, b in self.set(s).shards)

    def dump(self) -> str:
        return self.model_dump_json(exclude_none=True)
