"""The ensemble engine: member engines driven in the same scheduler step, their next-token
distributions combined before the scheduler samples once.

It meets the engine contract (engine/base.py), so batching, streaming, stop sequences, usage and
log-probabilities work as for one model. Each member engine keeps its own KV cache and is given the
same sequences with the same tokens in every step. A sequence routed to one member (a vote ensemble's
per-member answer, see RoutableEngine) runs on that member alone and gets its raw logits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from model_runtime.config import ModelSettings, RegistrySettings
from model_runtime.engine.base import Engine, EngineInfo, ModelLoadError
from model_runtime.engine.factory import LoadContext
from model_runtime.engine.loading import detect_format, load_tokenizer
from model_runtime.ensemble.combine import Combiner, aligned_logprobs, combiner_for
from model_runtime.ensemble.spec import MemberSpec, read_spec
from model_runtime.ensemble.tokenizers import require_shared_tokenizer
from model_runtime.registry.registry import RegistryError
from model_runtime.registry.resolve import materialize

log = logging.getLogger(__name__)


class EnsembleEngine:
    def __init__(
        self,
        members: Sequence[Engine],
        member_names: Sequence[str],
        combiner: Combiner,
        tokenizer: PreTrainedTokenizerBase,
        info: EngineInfo,
    ) -> None:
        self.members = list(members)
        self.member_names = tuple(member_names)
        self.combiner = combiner
        self.tokenizer = tokenizer
        self.info = info
        self._route: dict[int, int] = {}  # sequence -> the one member it runs on

    def route(self, seq_id: int, member: int) -> None:
        if not 0 <= member < len(self.members):
            raise ValueError(f"member {member}: this ensemble has members 0..{len(self.members) - 1}")
        self._route[seq_id] = member

    @torch.inference_mode()
    def step(
        self,
        decode_ids: Sequence[int],
        decode_tokens: Sequence[int],
        new_ids: Sequence[int],
        new_prompts: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        ids = [*decode_ids, *new_ids]
        routes = [self._route.get(s) for s in ids]
        decoded = len(decode_ids)
        shared = [k for k, r in enumerate(routes) if r is None]
        shared_logits: list[torch.Tensor] = []
        own: list[tuple[list[int], torch.Tensor]] = []
        for member, engine in enumerate(self.members):
            # Rows of the output this member computes: every unrouted sequence and those routed to it,
            # in the step's order, so that its own "decode all live sequences" rule holds.
            rows = [k for k, r in enumerate(routes) if r is None or r == member]
            if not rows:
                continue
            joining = [k for k in rows if k >= decoded]
            logits = engine.step(
                [ids[k] for k in rows if k < decoded],
                [decode_tokens[k] for k in rows if k < decoded],
                [ids[k] for k in joining],
                [new_prompts[k - decoded] for k in joining],
            )
            logits = logits.float().cpu()  # combined on the CPU, where the scheduler samples anyway
            mine = [j for j, k in enumerate(rows) if routes[k] == member]
            if mine:
                own.append(([rows[j] for j in mine], logits[mine]))
            if shared:
                shared_logits.append(logits[[j for j, k in enumerate(rows) if routes[k] is None]])
        # Members may pad their vocabulary differently; ids past the shared tokenizer are never text.
        width = min(t.shape[1] for t in [*shared_logits, *(o[1] for o in own)])
        out = torch.empty(len(ids), width)
        if shared:
            out[shared] = self.combiner(aligned_logprobs(shared_logits))
        for rows, logits in own:
            out[rows] = logits[:, :width]
        return out

    def prefill(self, seq_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Add sequences while no other is live (the thread probe's and tests' convenience)."""
        return self.step([], [], seq_ids, prompts)

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        return self.step(seq_ids, tokens, [], [])

    def release(self, seq_ids: Sequence[int]) -> None:
        for engine in self.members:
            engine.release(seq_ids)  # each ignores the ids it never had
        for seq_id in seq_ids:
            self._route.pop(seq_id, None)

    def reset(self) -> None:
        for engine in self.members:
            engine.reset()
        self._route.clear()

    def close(self) -> None:
        for engine in self.members:
            engine.close()
        self.members.clear()


def member_folder(member: MemberSpec, folder: Path, registry: RegistrySettings | None) -> Path:
    """Where a member's files are: inside the ensemble folder, or pulled from the registry (once,
    verified, into the registry cache) by its pinned reference."""
    ref = member.registry_ref
    if ref is None:
        path = folder / member.source
        if not path.is_dir():
            raise ModelLoadError(f"{folder}: member {member.name}: {member.source} is missing")
        return path
    if registry is None or not registry.url:
        raise ModelLoadError(f"member {member.name} is {ref}, but registry.url is not set")
    try:
        return Path(materialize(ModelSettings(path=ref), registry).path)
    except RegistryError as exc:
        raise ModelLoadError(f"member {member.name} ({ref}): {exc}") from exc


def load_ensemble_engine(settings: ModelSettings, context: LoadContext) -> EnsembleEngine:
    """The engine loader of the `ensemble` format (see plugin.py): the members are loaded through the
    context, by the engine table's loaders of their own formats."""
    started = time.perf_counter()
    folder = Path(settings.path)
    spec = read_spec(folder)
    tokenizer = load_tokenizer(detect_format(folder), settings.trust_remote_code)
    member_settings = []
    for member in spec.members:
        path = member_folder(member, folder, context.registry)
        fmt = detect_format(path)
        if fmt.kind == "ensemble":
            raise ModelLoadError(f"member {member.name}: an ensemble cannot be a member of another")
        # Refused before any weights are read: the tokenizers alone decide.
        require_shared_tokenizer(tokenizer, [(member.name, load_tokenizer(fmt, settings.trust_remote_code))])
        member_settings.append(settings.model_copy(update={"path": str(path), "served_name": member.name}))
    combiner = combiner_for(spec, folder)
    members = [context.load(s) for s in member_settings]
    infos = [m.info for m in members]
    info = EngineInfo(
        max_context=min(i.max_context for i in infos),
        eos_token_ids=frozenset().union(*(i.eos_token_ids for i in infos)),
        device=infos[0].device,
        dtype="+".join(sorted({i.dtype for i in infos})),
        parameters=sum(i.parameters for i in infos),
        load_seconds=time.perf_counter() - started,
    )
    log.info(
        "loaded ensemble",
        extra={
            "model": str(folder),
            "method": spec.method,
            "members": ",".join(spec.names),
            "parameters": info.parameters,
            "load_seconds": round(info.load_seconds, 3),
        },
    )
    return EnsembleEngine(members, spec.names, combiner, tokenizer, info)
