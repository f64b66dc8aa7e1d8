"""Members of an ensemble must share one tokenizer: the same token for every id, and the same special
tokens. Their distributions are combined id by id, so a member whose id 17 is another string would
vote for a different text; such a member is refused at load, with the difference named."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from model_runtime.engine.base import ModelLoadError

_SHOWN = 3  # examples quoted per kind of difference


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """Role -> token for bos/eos/pad/unk and the rest, plus every added special token by id."""
    named = {
        role: str(token)
        for role, token in tokenizer.special_tokens_map.items()
        if role != "additional_special_tokens"
    }
    added = {
        f"added token {index}": token.content
        for index, token in tokenizer.added_tokens_decoder.items()
        if token.special
    }
    return {**named, **added}


def tokenizer_differences(reference: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase) -> list[str]:
    """What differs between two tokenizers, in words; empty when they are interchangeable here."""
    problems = []
    ours, theirs = reference.get_vocab(), other.get_vocab()
    if len(ours) != len(theirs):
        problems.append(f"vocabulary size {len(theirs)} instead of {len(ours)}")
    moved = sorted((ours[t], t) for t in ours.keys() & theirs.keys() if ours[t] != theirs[t])
    if moved:
        examples = ", ".join(f"{t!r} is id {theirs[t]} instead of {i}" for i, t in moved[:_SHOWN])
        problems.append(f"{len(moved)} tokens have other ids ({examples})")
    for label, tokens in (("missing", ours.keys() - theirs.keys()), ("extra", theirs.keys() - ours.keys())):
        if tokens:
            examples = ", ".join(repr(t) for t in sorted(tokens)[:_SHOWN])
            problems.append(f"{len(tokens)} {label} tokens ({examples})")
    special, other_special = _special_tokens(reference), _special_tokens(other)
    for role in sorted(special.keys() | other_special.keys()):
        if special.get(role) != other_special.get(role):
            problems.append(
                f"special token {role}: {other_special.get(role)!r} instead of {special.get(role)!r}"
            )
    return problems


def require_shared_tokenizer(
    reference: PreTrainedTokenizerBase,
    members: Sequence[tuple[str, PreTrainedTokenizerBase]],
    reference_name: str = "the ensemble's tokenizer",
) -> None:
    """Raise ModelLoadError naming every member whose tokenizer differs from the reference, and how."""
    refused = [
        f"member {name}: {'; '.join(problems)}"
        for name, tokenizer in members
        if (problems := tokenizer_differences(reference, tokenizer))
    ]
    if refused:
        raise ModelLoadError(
            f"ensemble members must share one tokenizer (vocabulary and special tokens); compared with "
            f"{reference_name}: " + " | ".join(refused)
        )
