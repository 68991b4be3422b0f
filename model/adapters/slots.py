"""LoRA adapters in fixed slots: switched and mixed per sample in one batch, with no recompile or recapture.

`AdapterSlots.attach` wraps the generator's adapted projections (the modules adapter files name: qkv, proj,
w12, w3) in `SlotLoRALinear` layers holding fixed-size buffers: A (slots × max_rank × in), B (slots × out ×
max_rank) and a scale per slot. Every wrapped layer reads each batch row's slot from one index buffer shared by
the whole generator; the generator copies its `adapter_slots` input into that buffer (in place) before its
blocks run. Loading an adapter copies its matrices into a free slot in place (rank zero-padded up to max_rank),
so the tensors a compiled graph or a captured CUDA graph reads never move or change shape: switching, adding
and mixing adapters costs a copy, never a recompile. Slot 0 is "no adapter" (all zeros).

A forward called without `adapter_slots` (a batch in which no row uses an adapter) skips every gather: the
wrapped layers run their base projection alone, i.e. exactly the plain generator's operations. The choice is
a Python branch on the call's signature, so torch.compile and CUDA graphs see two distinct, fixed graphs.

The adapter files are the ones `format.py` reads and checks (same format, same base-model check); the peft
path (`peft_cache.py`) stays for training and for `FAEPipeline.load_adapter`. One generator uses one path or the
other: peft cannot wrap a slotted layer (`strip_lora` unwraps both, e.g. on the copy a fine-tune trains). Attach after the generator is on its device and dtype (moving it
afterwards would give each layer its own copy of the shared index), and do not save a slotted generator.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import AdapterError, InvalidInputError
from ..fingerprint import module_fingerprint
from .format import TARGET_MODULES, check_fits, check_scale, file_signature, read_adapter

# The generator's buffer holding each batch row's slot (shared with every SlotLoRALinear).
SLOT_INDEX = "adapter_slot_index"
NO_ADAPTER = 0
# The generator's attribute saying whether the current forward routes rows through their slots.
SLOT_ROUTING = "adapter_slot_routing"
# Generator -> its slot manager (kept off the module, so that copying a generator never copies a manager).
_MANAGERS: weakref.WeakKeyDictionary[nn.Module, AdapterSlots] = weakref.WeakKeyDictionary()


class AdapterSlotsFull(AdapterError):
    """Every adapter slot is held by running samples: wait until one is released."""


class SlotRouting:
    """Shared by a generator's slotted layers: `active` is False while a forward has no adapter rows."""

    def __init__(self) -> None:
        self.active = True


class SlotLoRALinear(nn.Module):
    """base(x) + scale[s]·(x·A[s]ᵀ)·B[s]ᵀ, with s the row's slot in the shared index (x is B×…×in); base(x)
    alone while the shared routing is inactive."""

    def __init__(
        self,
        base_layer: nn.Linear,
        num_slots: int,
        max_rank: int,
        slot_index: torch.Tensor,
        routing: SlotRouting,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer  # named as peft names it, so the base fingerprint ignores the wrapper
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        # Non-persistent: slots are serving state, never part of the generator's saved weights.
        self.register_buffer(
            "lora_A", torch.zeros(num_slots, max_rank, base_layer.in_features, **factory), persistent=False
        )
        self.register_buffer(
            "lora_B", torch.zeros(num_slots, base_layer.out_features, max_rank, **factory), persistent=False
        )
        self.register_buffer("lora_scale", torch.zeros(num_slots, **factory), persistent=False)
        self.register_buffer("slot_index", slot_index, persistent=False)
        self.routing = routing

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if not self.routing.active:
            return out
        batch = x.shape[0]
        slots = self.slot_index[:batch]
        rows = x.reshape(batch, -1, x.shape[-1])
        low = torch.bmm(rows, self.lora_A[slots].transpose(1, 2))  # B × N × rank
        delta = torch.bmm(low, self.lora_B[slots].transpose(1, 2)) * self.lora_scale[slots].view(batch, 1, 1)
        return out + delta.reshape(out.shape)


def route_adapter_slots(generator: nn.Module, adapter_slots: torch.Tensor | None, batch: int) -> None:
    """Copy each row's slot into the generator's shared index (in place), before its blocks run; None (no row
    uses an adapter) makes the slotted layers skip their gathers for this forward.

    Without slots attached, `adapter_slots` must be None or all zeros (no adapter).
    """
    index = getattr(generator, SLOT_INDEX, None)
    if index is None:
        if adapter_slots is not None and bool((adapter_slots != NO_ADAPTER).any()):
            raise InvalidInputError(
                "adapter_slots selects adapters, but this generator has no adapter slots attached "
                "(model.adapters.AdapterSlots.attach)"
            )
        return
    routing: SlotRouting = getattr(generator, SLOT_ROUTING)
    routing.active = adapter_slots is not None
    if adapter_slots is None:
        return
    if batch > index.shape[0]:
        raise InvalidInputError(
            f"a batch of {batch} rows exceeds the {index.shape[0]} rows the adapter slot index was sized for "
            "(attach with a larger max_batch)"
        )
    if tuple(adapter_slots.shape) != (batch,):
        raise InvalidInputError(
            f"adapter_slots must hold one slot per row ({batch}), got {tuple(adapter_slots.shape)}"
        )
    index[:batch].copy_(adapter_slots)


def has_adapter_slots(generator: nn.Module) -> bool:
    return getattr(generator, SLOT_INDEX, None) is not None


@dataclass
class _Slot:
    key: tuple[str, float] | None = None  # (adapter id, user scale) held; None when free
    content_hash: str = ""
    signature: tuple = ()
    users: int = 0  # running samples' holds (load acquires, release gives back)


class AdapterSlots:
    """The slots of one generator: which adapter each holds, LRU eviction among slots nobody uses."""

    def __init__(
        self,
        generator: nn.Module,
        layers: dict[str, SlotLoRALinear],
        slot_index: torch.Tensor,
        max_rank: int,
        base_fingerprint: str,
    ) -> None:
        self.generator = generator
        self.layers = layers
        self.slot_index = slot_index
        self.max_rank = max_rank
        self.base_fingerprint = base_fingerprint
        self.num_slots = next(iter(layers.values())).lora_scale.shape[0]
        self._slots = [_Slot() for _ in range(self.num_slots)]
        self._recent: OrderedDict[int, None] = OrderedDict()  # loaded slots, least recently used first
        self._lock = threading.RLock()

    @classmethod
    def attach(
        cls, generator: nn.Module, num_slots: int = 8, max_rank: int = 32, max_batch: int = 256
    ) -> AdapterSlots:
        """Wrap the generator's adapted projections in place; returns its slot manager."""
        from peft.tuners.lora import LoraLayer  # only to refuse peft-wrapped generators: keep peft off import

        if num_slots < 2 or max_rank < 1 or max_batch < 1:
            raise ValueError(
                "adapter slots need num_slots >= 2 (slot 0 is 'no adapter'), max_rank and max_batch >= 1"
            )
        if has_adapter_slots(generator) or any(isinstance(m, LoraLayer) for m in generator.modules()):
            raise AdapterError(
                "this generator already carries LoRA layers (slots or peft): attach to a clean one"
            )
        base_fingerprint = module_fingerprint(generator)
        device = next(generator.parameters()).device
        slot_index = torch.zeros(max_batch, dtype=torch.long, device=device)
        routing = SlotRouting()
        layers: dict[str, SlotLoRALinear] = {}
        for name, module in list(generator.named_modules()):
            if name.rpartition(".")[2] in TARGET_MODULES and isinstance(module, nn.Linear):
                parent_name, _, child = name.rpartition(".")
                layer = SlotLoRALinear(module, num_slots, max_rank, slot_index, routing)
                setattr(generator.get_submodule(parent_name) if parent_name else generator, child, layer)
                layers[name] = layer
        if not layers:
            raise AdapterError(f"the generator has no {'/'.join(TARGET_MODULES)} layers to adapt")
        generator.register_buffer(SLOT_INDEX, slot_index, persistent=False)
        setattr(generator, SLOT_ROUTING, routing)
        manager = cls(generator, layers, slot_index, max_rank, base_fingerprint)
        _MANAGERS[generator] = manager
        return manager

    # --- lookup --------------------------------------------------------------------------------------
    def slot_of(self, adapter_id: str, scale: float = 1.0) -> int | None:
        with self._lock:
            for slot, held in enumerate(self._slots):
                if slot != NO_ADAPTER and held.key == (adapter_id, float(scale)):
                    return slot
            return None

    def users(self, slot: int) -> int:
        return self._slots[slot].users

    # --- load / release -------------------------------------------------------------------------------
    def load(self, path: Path | str, adapter_id: str | None = None, scale: float = 1.0) -> int:
        """The slot holding the adapter at `path` at `scale`, copying it in if needed; holds it until `release`.

        Each (adapter id, scale) pair has its own slot, so a running sample's adapter never changes under it.
        """
        scale = check_scale(scale)
        with self._lock:
            signature = file_signature(path)
            slot = self.slot_of(adapter_id, scale) if adapter_id is not None else None
            if slot is None or self._slots[slot].signature != signature:
                files = read_adapter(path)
                adapter_id = adapter_id or f"adapter-{files.content_hash[:16]}"
                slot = self.slot_of(adapter_id, scale)
                if slot is None or self._slots[slot].content_hash != files.content_hash:
                    check_fits(self.generator, files, self.base_fingerprint)
                    unslotted = [m for m in files.config["modules"] if m not in self.layers]
                    if unslotted:
                        raise AdapterError(f"the adapter adapts {unslotted[:3]}, which have no adapter slots")
                    rank = files.config["rank"]
                    if rank > self.max_rank:
                        raise AdapterError(
                            f"the adapter in {files.path} has rank {rank}, above the {self.max_rank} these adapter "
                            "slots hold: fine-tune with a lower rank or raise FAE_ADAPTER_MAX_RANK"
                        )
                    if slot is not None:  # same id, new contents: running samples keep the old slot
                        self._slots[slot].key = None
                    slot = self._free_slot()
                    self._write(slot, files.state, rank, files.config.get("alpha", rank) / rank * scale)
                    self._slots[slot] = _Slot((adapter_id, scale), files.content_hash, signature)
                self._slots[slot].signature = signature
            self._slots[slot].users += 1
            self._recent[slot] = None
            self._recent.move_to_end(slot)
            return slot

    def release(self, slot: int) -> None:
        """Give back one hold on `slot` (taken by `load`); a slot nobody holds may be evicted."""
        with self._lock:
            if slot == NO_ADAPTER:
                return
            held = self._slots[slot]
            if held.users <= 0:
                raise AdapterError(f"adapter slot {slot} is not held")
            held.users -= 1

    def _free_slot(self) -> int:
        for slot in range(1, self.num_slots):
            if self._slots[slot].key is None and self._slots[slot].users == 0:
                return slot
        for slot in self._recent:  # least recently used first
            if self._slots[slot].users == 0:
                del self._recent[slot]
                return slot
        raise AdapterSlotsFull(
            f"all {self.num_slots - 1} adapter slots are held by running samples; retry when one finishes"
        )

    @torch.no_grad()
    def _write(self, slot: int, state: dict[str, torch.Tensor], rank: int, scale: float) -> None:
        """Copy the matrices into the slot in place; layers the adapter does not name get zeros."""
        for name, layer in self.layers.items():
            layer.lora_A[slot].zero_()
            layer.lora_B[slot].zero_()
            a, b = state.get(f"{name}.lora_A.weight"), state.get(f"{name}.lora_B.weight")
            if a is not None and b is not None:
                layer.lora_A[slot, :rank].copy_(a)
                layer.lora_B[slot, :, :rank].copy_(b)
            layer.lora_scale[slot] = scale


def detach_slots(generator: nn.Module) -> nn.Module:
    """Unwrap every slot layer back to its base Linear and drop the shared index (in place); returns it."""
    for name, module in list(generator.named_modules()):
        if isinstance(module, SlotLoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(
                generator.get_submodule(parent_name) if parent_name else generator, child, module.base_layer
            )
    if has_adapter_slots(generator):
        delattr(generator, SLOT_INDEX)
        delattr(generator, SLOT_ROUTING)
    _MANAGERS.pop(generator, None)
    return generator


def adapter_slots(generator: nn.Module) -> AdapterSlots | None:
    """The generator's slot manager, if `AdapterSlots.attach` wrapped it."""
    return _MANAGERS.get(generator)
