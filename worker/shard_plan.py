"""A sharded job's plan, as the worker that picks the job up records it in the job's shard hash
(app/store/leases.py): per set, where its input is and its shards' candidate ranges. Shards are named
``"<set>:<k>"`` (``ShardId``). frd:auto adds a second pass once the merge has found the reference outside the
FID network's domain: the radiomics of the sets named in ``radiomics``, over the same ranges, as shards
``"<set>:<k>:radiomics"``."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel

SETS = ("real", "generated")


RADIOMICS_PASS = "radiomics"  # a ShardId's ``work`` in frd:auto's second pass


class ShardId(NamedTuple):
    """Shard ``k`` of set ``set_name``, of the job's work or (``work`` RADIOMICS_PASS) of frd:auto's second
    pass; ``str()`` is its name in the hash, ``parse`` reads it back."""

    set_name: str
    k: int
    work: str = ""

    def __str__(self) -> str:
        return f"{self.set_name}:{self.k}" + (f":{self.work}" if self.work else "")

    @classmethod
    def parse(cls, name: str) -> ShardId:
        set_name, k, *work = name.split(":")
        if work and work != [RADIOMICS_PASS]:
            raise ValueError(f"not a shard name: {name!r}")
        return cls(set_name, int(k), *work)


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
    radiomics: list[str] = []  # frd:auto's second pass: the sets whose radiomics run in shards

    def set(self, set_name: str) -> SetPlan:
        return getattr(self, set_name)

    def shard_ids(self) -> list[ShardId]:
        """Every shard of the job, in shard order: the real set's, then the generated set's; then those of
        frd:auto's second pass."""
        return ([ShardId(s, k) for s in SETS for k in range(len(self.set(s).shards))] +
                [ShardId(s, k, RADIOMICS_PASS) for s in SETS if s in self.radiomics
                 for k in range(len(self.set(s).shards))])

    def range(self, shard: ShardId) -> tuple[int, int]:
        return self.set(shard.set_name).shards[shard.k]

    def images(self) -> int:
        """Candidates over all shards of both sets (those of a second pass count again)."""
        return sum((b - a) * (1 + (s in self.radiomics)) for s in SETS for a, b in self.set(s).shards)

    def dump(self) -> str:
        return self.model_dump_json(exclude_none=True)
