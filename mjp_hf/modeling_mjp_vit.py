"""PyTorch MJP-ViT: pixels -> patch tokens -> jigsaw (a block of tokens permuted among itself) -> position embeddings
(one learnable *unknown* one where shuffled) -> ViT layers -> heads -> losses, with the *localization loss* of the dense
absolute localization regressor (DALR), which regresses each kept position's (row, col) from its position embedding.
At inference it is the ViT `to_vit()` returns. Only MJP's deltas are here; lines copied from ViT are marked and tested."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ViTForImageClassification, ViTModel
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTPreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_mjp_vit import MJPViTConfig, pair, patch_grid
from .jigsaw import mask_grid, naive_shuffle_pixels, shuffle_tokens, step_jigsaw


# The parameters an MJP model has beyond a stock ViT: `to_vit()` drops them, converters initialise them.
MJP_ONLY_PARAMETERS = ("unk_position_embedding", "dalr_head")


def is_mjp_only_parameter(name: str) -> bool:
    """Whether the parameter (or checkpoint key) `name` belongs to MJP alone (see `MJP_ONLY_PARAMETERS`)."""
    return any(part in MJP_ONLY_PARAMETERS for part in name.split("."))


# Loading renames ViT's transformers 4 keys (Hub ViT/DeiT checkpoints) and the DALR head's old keys (in the embeddings);
# saving reverts both. For the model type only: by class name too, a classifier would rename twice (for its backbone).
_RENAMES = get_checkpoint_conversion_mapping("ViTModel") + [WeightRenaming(r"embeddings\.dalr_head\.", "dalr_head.")]
register_checkpoint_conversion_mapping("mjp_vit", _RENAMES, overwrite=True)


_MOVED_FROM_EMBEDDINGS = {
    "localization_loss": "localization_loss(jigsaw_mask)",
    "dalr_head": "dalr_head",
    "dalr_targets": "dalr_loss.targets()",
    "dalr_loss_weight": "dalr_loss.weight",
}


JIGSAW_ARGS = r"""
    jigsaw (`bool`, *optional*):
        Whether to apply the masked jigsaw puzzle. `None`: in training mode with probability `config.jigsaw_prob`
        (0 while the schedule has it off), in eval mode never. `True` forces it, in eval mode too; `False` refuses it.
    jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
        The positions to shuffle, instead of a random block mask. Implies `jigsaw=True`.
    jigsaw_permutation (`torch.LongTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
        A gather index: position `i` gets the token of position `jigsaw_permutation[..., i]` (identity outside the
        mask; without it, a random permutation within the mask). Alone, its moved positions are the mask: pass both
        to count a selected patch left in place as shuffled, as released. Implies `jigsaw=True`.
"""


@dataclass
class MJPViTModelOutput(BaseModelOutputWithPooling):
    r"""
    jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
        `True` at the patch positions the jigsaw selected (their tokens were permuted among themselves), `None` when
        no jigsaw ran; `model.localization_loss(jigsaw_mask)` is the step's DALR loss.
    """

    jigsaw_mask: torch.BoolTensor | None = None

    @property
    def localization_loss(self):
        raise AttributeError("The base model returns no loss: use `model.localization_loss(outputs.jigsaw_mask)`.")


@dataclass
class MJPImageClassifierOutput(ImageClassifierOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `classification_loss + localization_loss` when `labels` are given.
    classification_loss (`torch.FloatTensor` of shape `()`, *optional*):
        The loss of the classifier alone, when `labels` are given.
    localization_loss (`torch.FloatTensor` of shape `()`, *optional*):
        The weighted DALR loss, in training mode or with `labels` (inference outputs hold no loss).
    jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
        `True` at the patch positions the jigsaw selected; `None` when no jigsaw ran.
    """

    classification_loss: torch.FloatTensor | None = None
    localization_loss: torch.FloatTensor | None = None
    jigsaw_mask: torch.BoolTensor | None = None


def check_pixel_values(pixel_values: torch.Tensor | None, config: MJPViTConfig, interpolate_pos_encoding) -> None:
    """Refuse, naming the fix, a batch the model cannot embed, before any work is done."""
    shape = None if pixel_values is None else tuple(pixel_values.shape)
    if shape is None or len(shape) != 4 or shape[0] == 0:
        raise ValueError(f"pixel_values must be a batch of at least one image (batch, channels, h, w), got {shape}.")
    _, channels, height, width = shape
    (image_h, image_w), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    if channels != config.num_channels:
        raise ValueError(
            f"pixel_values has {channels} channels but the model expects {config.num_channels} (config.num_channels). "
            "Convert the images (e.g. `image.convert('RGB')`) or preprocess them with the model's image processor."
        )
    if height < patch_h or width < patch_w:
        raise ValueError(
            f"The images ({height}*{width}) are smaller than one patch ({patch_h}*{patch_w}); resize them to the model's "
            f"{image_h}*{image_w} with its image processor."
        )
    if not interpolate_pos_encoding and (height, width) != (image_h, image_w):
        raise ValueError(
            f"Input image size ({height}*{width}) doesn't match model ({image_h}*{image_w}). Resize the images with the "
            "model's image processor, or pass `interpolate_pos_encoding=True` to interpolate the position embeddings."
        )


class MJPViTEmbeddings(ViTEmbeddings):
    """ViT's embeddings with the jigsaw (`jigsaw()` draws a step's, `embed()` applies it to patch tokens: the same as to
    pixel patches, stride = kernel, and cheaper) and the unknown position embedding, a `[1, 1, hidden]` parameter."""

    def __init__(self, config: MJPViTConfig):
        super().__init__(config, use_mask_token=False)
        self.config = config
        self.grid_size, self.patch_hw = patch_grid(config)
        unk = config.applies_unk_position_embedding
        self.unk_position_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if unk else None
        # The schedule's switch (off during the warmup epochs) and the jigsaw's randomness (`None`: torch's default).
        self.jigsaw_enabled, self.jigsaw_generator = True, None

    def __getattr__(self, name):
        if name in _MOVED_FROM_EMBEDDINGS:  # the DALR's parts the embeddings held before it moved to the base model
            raise AttributeError(f"MJPViTEmbeddings.{name} moved: use `model.vit.{_MOVED_FROM_EMBEDDINGS[name]}`.")
        return super().__getattr__(name)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        r"""One of two stages, by its input (Opacus runs a forward again on its first argument alone for per-sample
        gradients, so each stage takes one tensor; `embed()` runs both): `pixel_values` `[batch, channels, height,
        width]` give [CLS] and the patch tokens, without position embeddings; `[batch, grid_h, grid_w]`, 1 where the
        position embedding is the unknown one (`jigsaw.mask_grid`), gives the position embeddings, [CLS]'s first."""
        if inputs.ndim == 4:
            return torch.cat((self.cls_token.expand(inputs.shape[0], -1, -1), self.patch_embeddings(inputs)), dim=1)
        batch_size, grid_h, grid_w = inputs.shape
        table = self.position_embeddings
        if (grid_h, grid_w) != self.grid_size:  # another image size, `interpolate_pos_encoding=True`
            empty = table.new_empty(0, 1 + grid_h * grid_w, table.shape[-1])
            table = self.interpolate_pos_encoding(empty, grid_h * self.patch_hw[0], grid_w * self.patch_hw[1])
        if self.unk_position_embedding is None:
            return table.expand(batch_size, -1, -1)
        # Exactly the table where the weight is 0 and the unknown embedding where it is 1, gradients included.
        return torch.lerp(table, self.unk_position_embedding, F.pad(inputs.flatten(1), (1, 0)).unsqueeze(-1))

    def jigsaw(self, pixel_values, jigsaw=None, jigsaw_mask=None, jigsaw_permutation=None):
        """The step's `(jigsaw_mask, jigsaw_permutation)`, or `(None, None)` (see `MJPViTModel.forward`)."""
        state = dict(training=self.training, enabled=self.jigsaw_enabled, generator=self.jigsaw_generator)
        given, device = (jigsaw, jigsaw_mask, jigsaw_permutation), pixel_values.device
        return step_jigsaw(self.config, len(pixel_values), self.grid_of(pixel_values), *given, **state, device=device)

    def grid_of(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        return pixel_values.shape[-2] // self.patch_hw[0], pixel_values.shape[-1] // self.patch_hw[1]

    def embed(self, pixel_values, jigsaw_mask=None, jigsaw_permutation=None) -> torch.Tensor:
        """The embedded sequence `[batch, 1 + num_patches, hidden]`: the patch tokens moved by `jigsaw_permutation`,
        the unknown position embedding where `jigsaw_mask` is `True` (a pair from `jigsaw()`; `None`: no jigsaw)."""
        if jigsaw_mask is not None and self.config.jigsaw_mode == "naive":
            pixel_values = naive_shuffle_pixels(pixel_values, self.patch_hw, jigsaw_mask, self.jigsaw_generator)
        tokens = self(pixel_values)
        if jigsaw_permutation is not None:  # [CLS] stays first
            tokens = shuffle_tokens(tokens, F.pad(jigsaw_permutation + 1, (1, 0)))
        unknown = mask_grid(jigsaw_mask, self.grid_of(pixel_values), len(pixel_values), self.position_embeddings)
        return self.dropout(tokens + self(unknown))


class MJPViTDALRHead(nn.Module):
    """Dense absolute localization regressor: maps a position embedding to the (row, col) of its patch. The layers
    live in `regressor` (not `layers`): transformers renames `layers.` in ViT checkpoint keys."""

    def __init__(self, config: MJPViTConfig):
        super().__init__()
        size = config.hidden_size
        hidden = [nn.Linear(size, size), nn.ReLU()] if config.dalr_head == "nonlinear" else []  # as released
        self.regressor = nn.Sequential(*hidden, nn.Linear(size, 2))

    def forward(self, position_embeddings: torch.Tensor) -> torch.Tensor:
        return self.regressor(position_embeddings)


class MJPViTDALRLoss(nn.Module):
    """The DALR's mean L1 error over the kept positions (targets built on the fly) times `weight`, a buffer that
    `set_mjp_schedule` changes without a recompile, in a module without parameters (Opacus refuses buffers beside)."""

    def __init__(self, config: MJPViTConfig):
        super().__init__()
        self.grid_size, _ = patch_grid(config)
        self.normalize_targets = config.dalr_normalize_targets
        self.register_buffer("weight", torch.tensor(float(config.dalr_loss_weight)), persistent=False)

    def targets(self, device=None) -> torch.Tensor:
        """The (row, col) of every patch position, `[num_patches, 2]` (float32), divided by the grid if normalised."""
        grid_h, grid_w = self.grid_size
        index = torch.arange(grid_h * grid_w, device=device)
        targets = torch.stack((index // grid_w, index % grid_w), dim=-1).float()
        return targets / torch.tensor([grid_h, grid_w], device=device) if self.normalize_targets else targets

    def forward(self, predictions: torch.Tensor, kept: torch.BoolTensor | None = None) -> torch.Tensor:
        """`predictions` `[rows, num_patches, 2]`; `kept` `[rows, num_patches]` (`None`: all). Each kept pair counts once."""
        errors = (predictions.float() - self.targets(predictions.device)).abs()
        if kept is None:
            return errors.mean() * self.weight
        kept = kept.unsqueeze(-1).to(errors.dtype)
        return (errors * kept).sum() / (2 * kept.sum()).clamp(min=1) * self.weight


@auto_docstring
class MJPViTPreTrainedModel(ViTPreTrainedModel):
    config: MJPViTConfig
    config_class = MJPViTConfig
    _no_split_modules = ["MJPViTEmbeddings", "ViTLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MJPViTEmbeddings) and module.unk_position_embedding is not None:
            init.trunc_normal_(module.unk_position_embedding, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, MJPViTDALRLoss):
            init.constant_(module.weight, float(self.config.dalr_loss_weight))

    # The DALR loss once per sample for per-sample gradients (DP-SGD), else once per mask row (the same loss and
    # gradient). Opacus' hooks turn it on: it lists them in its module's `autograd_grad_sample_hooks`.
    per_sample_gradients: bool = False

    @property
    def mjp_embeddings(self) -> MJPViTEmbeddings:
        return self.base_model.embeddings

    def set_mjp_schedule(self, *, jigsaw_enabled: bool | None = None, dalr_loss_weight: float | None = None) -> None:
        """Whether the jigsaw may run (it is off during the released warmup) and the DALR loss weight, this epoch;
        `config` keeps the base values."""
        if jigsaw_enabled is not None:
            self.base_model.embeddings.jigsaw_enabled = bool(jigsaw_enabled)
        if dalr_loss_weight is not None and self.base_model.dalr_loss is not None:
            self.base_model.dalr_loss.weight.fill_(float(dalr_loss_weight))

    def to_vit(self) -> ViTModel | ViTForImageClassification:
        """The stock transformers ViT with a copy of this model's weights but MJP's own: it computes exactly this
        model's inference outputs and saves as a `model_type: vit` checkpoint any transformers release loads."""
        state_dict = {k: v.detach().clone() for k, v in self.state_dict().items() if not is_mjp_only_parameter(k)}
        kwargs = {"add_pooling_layer": self.pooler is not None} if isinstance(self, ViTModel) else {}
        with torch.device("meta"):
            vit = self._vit_class(self.config.to_vit_config(), **kwargs)
        vit.load_state_dict(state_dict, strict=True, assign=True)
        return vit.train(self.training)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            self.config.auto_map = mjp_auto_map(self, getattr(self.config, "auto_map", None))
        return super().save_pretrained(save_directory, *args, **kwargs)


def mjp_auto_map(model: MJPViTPreTrainedModel, auto_map: dict | None = None) -> dict:
    """The `auto_map` of a saved MJP checkpoint, completing `auto_map`. transformers lists the saved class alone; a
    classifier's folder also serves `AutoModel` (its backbone), so list it there too for `trust_remote_code=True`."""
    module = type(model).__module__.rsplit(".", 1)[-1]
    config_name = f"{type(model.config).__module__.rsplit('.', 1)[-1]}.{type(model.config).__name__}"
    auto_map = {"AutoConfig": config_name, **(auto_map or {}), "AutoModel": f"{module}.MJPViTModel"}
    auto_map.pop("AutoModelForImageClassification", None)
    if isinstance(model, MJPViTForImageClassification):
        auto_map["AutoModelForImageClassification"] = f"{module}.MJPViTForImageClassification"
    return auto_map


@auto_docstring
class MJPViTModel(MJPViTPreTrainedModel, ViTModel):
    _vit_class = ViTModel  # what `to_vit()` returns (hub cards name it)

    def __init__(self, config: MJPViTConfig, add_pooling_layer: bool = True):
        r"""
        add_pooling_layer (bool, *optional*, defaults to `True`):
            Whether to add a pooling layer
        """
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.embeddings = MJPViTEmbeddings(config)  # in place of ViT's
        has_dalr = config.dalr_head != "none"
        self.dalr_head, self.dalr_loss = (MJPViTDALRHead(config), MJPViTDALRLoss(config)) if has_dalr else (None, None)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring(custom_args=JIGSAW_ARGS)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        jigsaw: bool | None = None,
        jigsaw_mask: torch.BoolTensor | None = None,
        jigsaw_permutation: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MJPViTModelOutput:
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        jigsaw_mask, jigsaw_permutation = self.embeddings.jigsaw(pixel_values, jigsaw, jigsaw_mask, jigsaw_permutation)
        # Copied from transformers.models.vit.modeling_vit.ViTModel.forward
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)
        # End of copy
        embedding_output = self.embeddings.embed(pixel_values, jigsaw_mask, jigsaw_permutation)
        # Copied from transformers.models.vit.modeling_vit.ViTModel.forward
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
        )
        hidden_states = embedding_output
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        # End of copy
        return MJPViTModelOutput(
            last_hidden_state=sequence_output, pooler_output=pooled_output, jigsaw_mask=jigsaw_mask
        )

    def localization_loss(self, jigsaw_mask: torch.BoolTensor | None = None, batch_size: int | None = None):
        """The weighted DALR loss of a step whose output had `jigsaw_mask` (`None`: no jigsaw; no head: `None`), over
        the positions that kept their own embedding, each (sample, position) pair once; the head reads the position
        embeddings, never the image. `batch_size` (default: one per mask row) repeats it per sample, for per-sample
        gradients (the classifier does under Opacus' hooks or with `per_sample_gradients`)."""
        if self.dalr_head is None:
            return None
        grid_size = self.dalr_loss.grid_size
        uses_unk = jigsaw_mask is not None and self.embeddings.unk_position_embedding is not None
        if not uses_unk or jigsaw_mask.shape[-1] != grid_size[0] * grid_size[1]:
            jigsaw_mask = None  # the table's own positions: all kept
        rows = batch_size or (1 if jigsaw_mask is None else jigsaw_mask.shape[0])
        grid = mask_grid(jigsaw_mask, grid_size, rows, self.embeddings.position_embeddings)
        position_embeddings = self.embeddings(grid)
        kept = None if jigsaw_mask is None else ~jigsaw_mask.expand(rows, -1)
        return self.dalr_loss(self.dalr_head(position_embeddings[:, 1:]), kept)


@auto_docstring(
    custom_intro="""
    MJP-ViT with an image classification head on the final [CLS] token: trained with the masked jigsaw puzzle and
    the DALR loss, identical to `ViTForImageClassification` at inference.
    """
)
class MJPViTForImageClassification(MJPViTPreTrainedModel, ViTForImageClassification):
    _vit_class = ViTForImageClassification

    # ViT's own `__init__` would build a stock ViTModel, thrown away.
    # Copied from transformers.models.vit.modeling_vit.ViTForImageClassification.__init__ with ViTModel->MJPViTModel,
    # ViTConfig->MJPViTConfig, super().__init__->super(ViTForImageClassification, self).__init__
    def __init__(self, config: MJPViTConfig):
        super(ViTForImageClassification, self).__init__(config)
        self.num_labels = config.num_labels
        self.vit = MJPViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()
        # End of copy

    @can_return_tuple
    @auto_docstring(custom_args=JIGSAW_ARGS)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        jigsaw: bool | None = None,
        jigsaw_mask: torch.BoolTensor | None = None,
        jigsaw_permutation: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MJPImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Labels for the classification loss; `loss` is then the classification loss plus the weighted DALR loss.
        """
        args = (jigsaw, jigsaw_mask, jigsaw_permutation, interpolate_pos_encoding, attention_mask)
        outputs: MJPViTModelOutput = self.vit(pixel_values, *args, **kwargs)
        # Copied from transformers.models.vit.modeling_vit.ViTForImageClassification.forward
        sequence_output = outputs.last_hidden_state
        pooled_output = sequence_output[:, 0, :]
        logits = self.classifier(pooled_output)
        # End of copy
        # A training signal, in eval mode too when labels make the loss the objective; inference outputs hold none.
        localization_loss = None
        if self.training or labels is not None:
            per_sample = self.per_sample_gradients or getattr(self, "autograd_grad_sample_hooks", None)
            batch_size = logits.shape[0] if per_sample else None
            localization_loss = self.vit.localization_loss(outputs.jigsaw_mask, batch_size=batch_size)
        loss = classification_loss = None
        if labels is not None:
            loss = classification_loss = self.loss_function(labels, logits, self.config, **kwargs)
            if localization_loss is not None:
                loss = classification_loss + localization_loss
        return MJPImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            classification_loss=classification_loss,
            localization_loss=localization_loss,
            jigsaw_mask=outputs.jigsaw_mask,
        )


__all__ = [
    "MJPImageClassifierOutput",
    "MJPViTDALRHead",
    "MJPViTDALRLoss",
    "MJPViTEmbeddings",
    "MJPViTForImageClassification",
    "MJPViTModel",
    "MJPViTModelOutput",
    "MJPViTPreTrainedModel",
]
