"""A model: a configuration and its parameters, with a digest of both."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import jax
import numpy as np

from dynsys.config import ModelConfig
from dynsys.nn.transformer import Transformer

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Model:
    """A configuration and its parameters; pass `model.params` into jitted functions. A model
    loaded from a checkpoint directory that holds a tokenizer.json carries its `tokenizer` (text
    in and out only: it takes no part in the digest or in any computation).

    Parameter leaves are treated as immutable (jax arrays): `digest` is cached against the
    identity of the leaves, so replacing a leaf in the tree is noticed, mutating a numpy leaf
    in place is not.
    """

    config: ModelConfig
    params: dict
    tokenizer: Tokenizer | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def module(self) -> Transformer:
        return Transformer(self.config)

    def with_rope(self, use_rope: bool) -> Model:
        """The same weights with the rotary embedding on, or replaced by the identity."""
        other = Model(self.config.with_rope(use_rope), self.params, self.tokenizer)
        other.__dict__["_params_digest"] = self.__dict__.get("_params_digest")
        return other

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree_util.tree_leaves(self.params))

    @property
    def params_digest(self) -> str:
        """SHA-256 of every parameter: its path, dtype, shape and bytes (all of them)."""
        leaves = jax.tree_util.tree_leaves_with_path(self.params)
        ids = tuple(id(x) for _, x in leaves)
        cached = self.__dict__.get("_params_digest")
        if cached is not None and cached[0] == ids:
            return cached[1]
        h = hashlib.sha256()
        for path, x in leaves:
            x = np.asarray(x)
            h.update(f"{jax.tree_util.keystr(path)}:{x.dtype}:{x.shape};".encode())
            h.update(np.ascontiguousarray(x).data)
        self.__dict__["_params_digest"] = (ids, h.hexdigest())
        return self.__dict__["_params_digest"][1]

    @property
    def digest(self) -> str:
        """SHA-256 of the configuration and all parameters: what a cached prefix or map of
        this model depends on."""
        return hashlib.sha256(f"{self.config!r}|{self.params_digest}".encode()).hexdigest()

    def copy(self) -> Model:
        """The same model with a fresh parameter tree (the immutable leaves are shared), so
        editing one tree's structure leaves the other alone."""
        return Model(self.config, jax.tree_util.tree_map(lambda x: x, self.params),
                     self.tokenizer)
