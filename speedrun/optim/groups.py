"""Which parameter goes to which optimizer: hidden matrices to Muon, everything else to AdamW.

Muon is only meant for the hidden weight matrices of a network. The input embedding (a lookup table, not a
linear map), the output head (its rows are per-token classifiers) and 0-D/1-D parameters (norm gains, biases,
learned scalars) do better with AdamW, usually each at its own learning rate. `split_params` applies those
default rules, lets a submission override them by parameter name (glob) or predicate, and returns ready-made
param groups for both optimizers:

    split = split_params(model, lr={"muon": 0.05, "embed": 0.6, "head": 0.008, "scalar": 0.04})
    optimizers = [Muon(split.muon, momentum=0.95), AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10)]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from speedrun.errors import SpeedrunError

CATEGORIES = ("muon", "embed", "head", "scalar")
HEAD_NAMES = ("lm_head", "head")

Matcher = str | Callable[[str, torch.Tensor], bool]


@dataclass
class ParamSplit:
    """Param groups for Muon (`muon`) and AdamW (`adamw`, one group per non-empty category, each with a `name`
    key), and the category chosen for every trainable parameter by name (`categories`).

    The groups are plain dicts: add per-group options (e.g. `weight_decay`) before building the optimizers.
    """

    muon: list[dict] = field(default_factory=list)
    adamw: list[dict] = field(default_factory=list)
    categories: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per category: parameter count and size, for a run log."""
        lines = []
        for group in self.muon + self.adamw:
            numel = sum(p.numel() for p in group["params"])
            lr = f" lr={group['lr']}" if "lr" in group else ""
            lines.append(f"{group['name']:<7} {len(group['params']):>4} params {numel:>12,d} values{lr}")
        return "\n".join(lines)


def split_params(model: nn.Module, *, lr: dict[str, float] | None = None,
                 rules: Sequence[tuple[Matcher, str]] = ()) -> ParamSplit:
    """Sort `model`'s trainable parameters into the categories muon / embed / head / scalar.

    Defaults, in order: 0-D/1-D parameters -> scalar; weights of `nn.Embedding` modules -> embed; the output
    head -> head (parameters of a module named `lm_head` or `head`, or of the model's last `nn.Linear` when its
    out_features equals an embedding's vocabulary size); every other parameter (2-D, or higher-rank and
    flattened by Muon) -> muon. A weight tied to the embedding appears once, as embed.
    `rules`: (matcher, category) pairs checked first, first match wins; a matcher is a glob on the parameter
    name (e.g. "blocks.*.attn.proj.weight") or a predicate `(name, param) -> bool`.
    `lr`: a learning rate per category; categories left out take the optimizer's default.
    Parameters with `requires_grad=False` are left out.
    """
    lr = dict(lr or {})
    for key in lr:
        if key not in CATEGORIES:
            raise SpeedrunError(f"split_params: lr has unknown category {key!r}; categories are {', '.join(CATEGORIES)}")
    for _, category in rules:
        if category not in CATEGORIES:
            raise SpeedrunError(f"split_params: rule category {category!r} is not one of {', '.join(CATEGORIES)}")
    embedding_ids, head_ids = _default_owners(model)
    split = ParamSplit()
    members: dict[str, list[torch.Tensor]] = {c: [] for c in CATEGORIES}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        category = _by_rules(name, p, rules) or _by_default(p, embedding_ids, head_ids)
        if category == "muon" and p.ndim < 2:
            raise SpeedrunError(f"split_params: {name} has shape {tuple(p.shape)}; Muon needs a matrix")
        members[category].append(p)
        split.categories[name] = category
    for category in CATEGORIES:
        if not members[category]:
            continue
        group = {"params": members[category], "name": category}
        if category in lr:
            group["lr"] = lr[category]
        (split.muon if category == "muon" else split.adamw).append(group)
    return split


def _by_rules(name: str, p: torch.Tensor, rules: Sequence[tuple[Matcher, str]]) -> str | None:
    for matcher, category in rules:
        hit = fnmatch.fnmatchcase(name, matcher) if isinstance(matcher, str) else matcher(name, p)
        if hit:
            return category
    return None


def _by_default(p: torch.Tensor, embedding_ids: set[int], head_ids: set[int]) -> str:
    if p.ndim < 2:
        return "scalar"
    if id(p) in embedding_ids:
        return "embed"
    if id(p) in head_ids:
        return "head"
    return "muon"


def _default_owners(model: nn.Module) -> tuple[set[int], set[int]]:
    """Ids of embedding weights and of output-head parameters under the default rules."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    embedding_ids = {id(m.weight) for m in embeddings}
    vocab_sizes = {m.num_embeddings for m in embeddings}
    head_ids: set[int] = set()
    linears = []
    for module_name, module in model.named_modules():
        if module_name.rsplit(".", 1)[-1] in HEAD_NAMES:
            head_ids.update(id(p) for p in module.parameters(recurse=False))
        if isinstance(module, nn.Linear):
            linears.append(module)
    if linears and linears[-1].out_features in vocab_sizes:
        head_ids.update(id(p) for p in linears[-1].parameters(recurse=False))
    return embedding_ids, head_ids
