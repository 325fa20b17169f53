"""PyTorch MJP-ViT: a transformers ViT trained with Masked Jigsaw Puzzle position embeddings.

Data flows one way: pixels -> patch tokens -> jigsaw (a block of patch tokens permuted among itself) -> position
embeddings (the shuffled positions get one learnable *unknown* position embedding) -> ViT layers -> heads -> losses.
The classifier's loss adds the *localization loss*: the weighted L1 error of the *dense absolute localization
regressor* (DALR), which regresses every kept position's (row, col) from its position embedding and so keeps the
embeddings spatially meaningful. The base model owns the DALR head (`MJPViTModel.localization_loss`).

At inference nothing is shuffled and the model computes exactly what a `ViTForImageClassification` holding the same
weights computes; `to_vit()` returns that model. Only the classes' MJP deltas are written here; the lines copied from
transformers' ViT are marked "Copied from" and tests/test_modeling.py keeps them equal to the installed transformers.
"""

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
from .jigsaw import complete_given_jigsaw, draw_jigsaw, permute_patch_pixels, random_pixel_permutation, shuffle_tokens


# The parameters an MJP model has beyond a stock ViT: `to_vit()` drops them, converters initialise them.
MJP_ONLY_PARAMETERS = ("unk_position_embedding", "dalr_head")


def is_mjp_only_parameter(name: str) -> bool:
    """Whether the parameter (or checkpoint key) `name` belongs to MJP alone (see `MJP_ONLY_PARAMETERS`)."""
    return any(part in MJP_ONLY_PARAMETERS for part in name.split("."))


# Loading renames: ViT's transformers 4 key names (stock ViT/DeiT checkpoints on the Hub; transformers renames them
# only for the model types it knows), and the DALR head's place before it moved to the base model, inside the
# embeddings. Saving reverts both, so the files keep the layout every release of mjp-hf reads. Registered for the
# model type only: by class name too, a classifier would collect it twice (once for its backbone) and rename twice.
register_checkpoint_conversion_mapping(
    MJPViTConfig.model_type,
    get_checkpoint_conversion_mapping("ViTModel") + [WeightRenaming(r"embeddings\.dalr_head\.", "dalr_head.")],
    overwrite=True,
)


def _moved(message: str) -> property:
    """An attribute that moved: reading it raises an `AttributeError` naming its replacement."""

    def moved(self):
        raise AttributeError(f"{type(self).__name__}: {message}")

    return property(moved)


_MOVED_FROM_EMBEDDINGS = {
    "localization_loss": "localization_loss(jigsaw_mask)",
    "dalr_head": "dalr_head",
    "dalr_targets": "dalr_loss.targets()",
    "dalr_loss_weight": "dalr_loss.weight",
    "dalr_target_grid": "dalr_loss.targets()",
}


@dataclass
class MJPViTModelOutput(BaseModelOutputWithPooling):
    r"""
    jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
        `True` at the patch positions the jigsaw selected (their tokens were permuted among themselves); one row for
        the whole batch or one per sample. `None` when no jigsaw ran. `model.localization_loss(jigsaw_mask)` is the
        step's DALR loss.
    """

    jigsaw_mask: torch.BoolTensor | None = None
    localization_loss = _moved("the base model returns no loss; use `model.localization_loss(outputs.jigsaw_mask)`.")


@dataclass
class MJPImageClassifierOutput(ImageClassifierOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `classification_loss + localization_loss` when `labels` are given.
    classification_loss (`torch.FloatTensor` of shape `()`, *optional*):
        The loss of the classifier alone, when `labels` are given.
    localization_loss (`torch.FloatTensor` of shape `()`, *optional*):
        The weighted DALR loss, when the model has a DALR head and the loss is used: in training mode, or when
        `labels` are given. Inference outputs hold no loss (pipelines split every output tensor by sample).
    jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
        `True` at the patch positions the jigsaw selected; `None` when no jigsaw ran.
    """

    classification_loss: torch.FloatTensor | None = None
    localization_loss: torch.FloatTensor | None = None
    jigsaw_mask: torch.BoolTensor | None = None


def check_pixel_values(pixel_values: torch.Tensor | None, config: MJPViTConfig, interpolate_pos_encoding) -> None:
    """Refuse, naming the fix, a batch the model cannot embed, before any work is done."""
    if pixel_values is None or pixel_values.ndim != 4:
        shape = None if pixel_values is None else tuple(pixel_values.shape)
        raise ValueError(f"pixel_values must have shape (batch_size, num_channels, height, width), got {shape}.")
    batch_size, num_channels, height, width = pixel_values.shape
    (image_h, image_w), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    if batch_size == 0:
        raise ValueError(
            f"pixel_values holds no image (shape {tuple(pixel_values.shape)}); pass a batch of at least one."
        )
    if num_channels != config.num_channels:
        raise ValueError(
            f"pixel_values has {num_channels} channels but the model expects {config.num_channels} "
            "(config.num_channels). Convert the images (e.g. `image.convert('RGB')`) or preprocess them with the "
            "model's image processor."
        )
    if height < patch_h or width < patch_w:
        raise ValueError(
            f"The images ({height}*{width}) are smaller than one patch ({patch_h}*{patch_w}); resize them to the "
            f"model's {image_h}*{image_w} with its image processor."
        )
    if not interpolate_pos_encoding and (height, width) != (image_h, image_w):
        raise ValueError(
            f"Input image size ({height}*{width}) doesn't match model ({image_h}*{image_w}). Resize the images with "
            "the model's image processor, or pass `interpolate_pos_encoding=True` to interpolate the position "
            "embeddings."
        )


class MJPViTEmbeddings(ViTEmbeddings):
    """ViT's embeddings, with the jigsaw on patch tokens and the unknown position embedding.

    Permuting patch tokens after the (stride = kernel) patch embedding is exactly permuting pixel patches before it,
    and cheaper. `position_embeddings` keeps the stock ViT shape `[1, 1 + num_patches, hidden]`; the unknown
    position embedding is a separate `[1, 1, hidden]` parameter. `jigsaw()` draws a step's jigsaw, `embed()` embeds
    a batch with it.
    """

    def __init__(self, config: MJPViTConfig):
        super().__init__(config, use_mask_token=False)
        self.config = config
        self.grid_size, _ = patch_grid(config)
        self.unk_position_embedding = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.applies_unk_position_embedding else None
        )
        # The schedule's switch (`set_mjp_schedule`: off during the warmup epochs), and the source of the jigsaw's
        # randomness (`None`: torch's default generator of the input's device).
        self.jigsaw_enabled = True
        self.jigsaw_generator: torch.Generator | None = None

    def __getattr__(self, name):
        if name in _MOVED_FROM_EMBEDDINGS:  # the DALR's parts, now the base model's
            raise AttributeError(f"MJPViTEmbeddings.{name} moved: use `model.vit.{_MOVED_FROM_EMBEDDINGS[name]}`.")
        return super().__getattr__(name)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        r"""One of two stages, as its input says (Opacus computes a module's per-sample gradients by running its
        forward again on the first argument alone, so each stage takes one tensor; `embed()` runs both):

        - `pixel_values` `[batch, channels, height, width]`: [CLS] and the patch tokens `[batch, 1 + num_patches,
          hidden]`, without position embeddings;
        - `unknown` `[batch, grid_h, grid_w]` in the position embeddings' dtype, 1 where the position embedding is
          the unknown one and 0 elsewhere: the position embeddings `[batch, 1 + grid_h * grid_w, hidden]`, [CLS]'s
          first, interpolated for a grid other than the config's.
        """
        if inputs.ndim == 4:
            return torch.cat((self.cls_token.expand(inputs.shape[0], -1, -1), self.patch_embeddings(inputs)), dim=1)
        batch_size, grid_h, grid_w = inputs.shape
        table = self.position_embeddings
        if (grid_h, grid_w) != self.grid_size:
            patch_h, patch_w = self.patch_embeddings.patch_size
            empty = table.new_empty(0, 1 + grid_h * grid_w, table.shape[-1])
            table = self.interpolate_pos_encoding(empty, grid_h * patch_h, grid_w * patch_w)
        if self.unk_position_embedding is None:
            return table.expand(batch_size, -1, -1)
        # Exactly the table where the weight is 0 and the unknown embedding where it is 1, gradients included.
        return torch.lerp(table, self.unk_position_embedding, F.pad(inputs.flatten(1), (1, 0)).unsqueeze(-1))

    def _grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        patch_h, patch_w = self.patch_embeddings.patch_size
        return pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w

    def jigsaw(self, pixel_values, jigsaw=None, jigsaw_mask=None, jigsaw_permutation=None):
        """The step's `(jigsaw_mask, jigsaw_permutation)`, or `(None, None)` without a jigsaw: the given ones,
        checked and completed, or a draw (see `MJPViTModel.forward` for the arguments)."""
        given = jigsaw_mask is not None or jigsaw_permutation is not None
        if given and jigsaw is False:
            raise ValueError("jigsaw=False contradicts the jigsaw_mask/jigsaw_permutation passed; drop one of them.")
        batch_size, grid_size = pixel_values.shape[0], self._grid(pixel_values)
        if given:
            return complete_given_jigsaw(jigsaw_mask, jigsaw_permutation, batch_size, grid_size, self.jigsaw_generator)
        if jigsaw is False or (jigsaw is None and not self.training):
            return None, None
        probability = 1.0 if jigsaw else (self.config.jigsaw_prob if self.jigsaw_enabled else 0.0)
        num_masks = batch_size if self.config.jigsaw_per_sample else 1
        generator, device = self.jigsaw_generator, pixel_values.device
        return draw_jigsaw(
            self.config, num_masks, grid_size, probability=probability, generator=generator, device=device
        )

    def embed(self, pixel_values, jigsaw_mask=None, jigsaw_permutation=None) -> torch.Tensor:
        """The embedded sequence `[batch, 1 + num_patches, hidden]`: the patch tokens moved by `jigsaw_permutation`,
        the unknown position embedding where `jigsaw_mask` is `True` (a pair from `jigsaw()`; `None`: no jigsaw)."""
        batch_size, grid_size = pixel_values.shape[0], self._grid(pixel_values)
        if jigsaw_mask is not None and self.config.jigsaw_mode == "naive":
            patch_size = self.patch_embeddings.patch_size
            pixel_permutation = random_pixel_permutation(patch_size, self.jigsaw_generator, pixel_values.device)
            permuted = permute_patch_pixels(pixel_values, patch_size, pixel_permutation)
            # Samples whose step lost the coin flip (an empty row) keep their pixels in place too.
            pixel_values = torch.where(jigsaw_mask.any(-1).view(-1, 1, 1, 1), permuted, pixel_values)
        tokens = self(pixel_values)
        if jigsaw_permutation is not None:  # [CLS] stays first
            tokens = shuffle_tokens(tokens, F.pad(jigsaw_permutation + 1, (1, 0)))
        return self.dropout(tokens + self(unknown_grid(jigsaw_mask, grid_size, batch_size, self.position_embeddings)))


def unknown_grid(jigsaw_mask, grid_size, batch_size, position_embeddings) -> torch.Tensor:
    """The `MJPViTEmbeddings` input `[batch_size, grid_h, grid_w]` putting the unknown embedding where `jigsaw_mask`
    (`[batch_size or 1, num_patches]`, or `None` for nowhere) is `True`."""
    if jigsaw_mask is None:
        jigsaw_mask = torch.zeros(1, grid_size[0] * grid_size[1], dtype=torch.bool, device=position_embeddings.device)
    return jigsaw_mask.to(position_embeddings.dtype).view(-1, *grid_size).expand(batch_size, -1, -1)


class MJPViTDALRHead(nn.Module):
    """Dense absolute localization regressor: maps a position embedding to the (row, col) of its patch.

    The layers live in `regressor` (not `layers`): transformers renames `layers.` in ViT checkpoint keys.
    """

    def __init__(self, config: MJPViTConfig):
        super().__init__()
        hidden_size = config.hidden_size
        if config.dalr_head == "nonlinear":
            self.regressor = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 2))
        else:
            self.regressor = nn.Sequential(nn.Linear(hidden_size, 2))

    def forward(self, position_embeddings: torch.Tensor) -> torch.Tensor:
        return self.regressor(position_embeddings)


class MJPViTDALRLoss(nn.Module):
    """The DALR's loss: the mean L1 error of its (row, col) predictions over the kept positions, times `weight`.

    `weight` is a buffer so that `set_mjp_schedule` changes it every epoch without recompiling a compiled model; this
    module has no parameter, as Opacus refuses buffers beside trainable parameters. The targets, the patch grid's
    coordinates, are built on the fly.
    """

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
        """`predictions` `[rows, num_patches, 2]`; `kept` `[rows, num_patches]` (`None`: every position). Each kept
        (row, position) pair counts once."""
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

    @property
    def mjp_embeddings(self) -> MJPViTEmbeddings:
        return self.base_model.embeddings

    def set_mjp_schedule(self, *, jigsaw_enabled: bool | None = None, dalr_loss_weight: float | None = None) -> None:
        """Set the training schedule: whether the jigsaw may run at all (it is off during the released warmup),
        and the current DALR loss weight. `config` keeps the base values."""
        if jigsaw_enabled is not None:
            self.base_model.embeddings.jigsaw_enabled = bool(jigsaw_enabled)
        if dalr_loss_weight is not None and self.base_model.dalr_loss is not None:
            self.base_model.dalr_loss.weight.fill_(float(dalr_loss_weight))

    def to_vit(self) -> ViTModel | ViTForImageClassification:
        """The stock transformers ViT holding a copy of this model's weights, without the unknown position
        embedding and the DALR head: it computes exactly this model's inference outputs and saves as a
        `model_type: vit` checkpoint that any transformers release and serving stack can load."""
        state_dict = {
            key: value.detach().clone() for key, value in self.state_dict().items() if not is_mjp_only_parameter(key)
        }
        with torch.device("meta"):
            vit = self._vit_class(self.config.to_vit_config(), **self._vit_init_kwargs())
        vit.load_state_dict(state_dict, strict=True, assign=True)
        return vit.train(self.training)

    def _vit_init_kwargs(self) -> dict:
        return {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            self.config.auto_map = mjp_auto_map(self, getattr(self.config, "auto_map", None))
        return super().save_pretrained(save_directory, *args, **kwargs)


def mjp_auto_map(model: MJPViTPreTrainedModel, auto_map: dict | None = None) -> dict:
    """The `auto_map` of a saved MJP checkpoint, completing `auto_map`. transformers lists the saved class alone; a
    classifier's folder also serves `AutoModel` (its backbone), so list it there too for `trust_remote_code=True`."""
    module = type(model).__module__.rsplit(".", 1)[-1]
    config_class = type(model.config)
    auto_map = {
        "AutoConfig": f"{config_class.__module__.rsplit('.', 1)[-1]}.{config_class.__name__}",
        **(auto_map or {}),
        "AutoModel": f"{module}.MJPViTModel",
    }
    if isinstance(model, MJPViTForImageClassification):
        auto_map["AutoModelForImageClassification"] = f"{module}.MJPViTForImageClassification"
    else:
        auto_map.pop("AutoModelForImageClassification", None)
    return auto_map


@auto_docstring
class MJPViTModel(MJPViTPreTrainedModel, ViTModel):
    _vit_class = ViTModel

    def __init__(self, config: MJPViTConfig, add_pooling_layer: bool = True):
        r"""
        add_pooling_layer (bool, *optional*, defaults to `True`):
            Whether to add a pooling layer
        """
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.embeddings = MJPViTEmbeddings(config)  # in place of ViT's
        has_dalr = config.dalr_head != "none"
        self.dalr_head = MJPViTDALRHead(config) if has_dalr else None
        self.dalr_loss = MJPViTDALRLoss(config) if has_dalr else None
        self.post_init()

    def _vit_init_kwargs(self) -> dict:
        return {"add_pooling_layer": self.pooler is not None}

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring
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
        r"""
        jigsaw (`bool`, *optional*):
            Whether to apply the masked jigsaw puzzle. `None` follows the model: in training mode each step is
            jigsawed with probability `config.jigsaw_prob` (unless the schedule has switched the jigsaw off), in eval
            mode never. `True` forces it, also in eval mode (evaluation under shuffling); `False` turns it off.
        jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
            The positions to shuffle, instead of a random block mask. Implies `jigsaw=True`.
        jigsaw_permutation (`torch.LongTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
            A gather index: the token placed at position `i` comes from position `jigsaw_permutation[..., i]`
            (identity outside the mask). Without it the selected positions are permuted at random. Given without
            `jigsaw_mask`, the mask is the set of moved positions: pass the mask too to count a selected patch
            that stays in place as shuffled, as the released code does. Implies `jigsaw=True`.
        """
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
            config=self.config,
            inputs_embeds=embedding_output,
            attention_mask=attention_mask,
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

    def localization_loss(
        self, jigsaw_mask: torch.BoolTensor | None = None, batch_size: int | None = None
    ) -> torch.Tensor | None:
        """The weighted DALR loss of a step whose output had `jigsaw_mask` (`None`: no jigsaw); `None` without a
        DALR head. Positions that carried the unknown embedding are left out; with per-sample masks every kept
        (sample, position) pair counts once. The head reads the position embeddings, never the image.

        `batch_size` (default: one per mask row) computes it once per sample, the same value, so that per-sample
        gradients (Opacus) give each sample its part.
        """
        if self.dalr_head is None:
            return None
        grid_size = self.dalr_loss.grid_size
        uses_unk = jigsaw_mask is not None and self.embeddings.unk_position_embedding is not None
        if not uses_unk or jigsaw_mask.shape[-1] != grid_size[0] * grid_size[1]:
            jigsaw_mask = None  # the table's own positions: all kept
        rows = batch_size or (1 if jigsaw_mask is None else jigsaw_mask.shape[0])
        position_embeddings = self.embeddings(
            unknown_grid(jigsaw_mask, grid_size, rows, self.embeddings.position_embeddings)
        )
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

        # Classifier head
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

        # Initialize weights and apply final processing
        self.post_init()
        # End of copy

    @can_return_tuple
    @auto_docstring
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
            Labels for computing the classification loss; `loss` is then the classification loss plus the
            weighted DALR loss.
        jigsaw (`bool`, *optional*):
            Whether to apply the masked jigsaw puzzle; `None` follows `self.training` and `config.jigsaw_prob`.
        jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
            The positions to shuffle, instead of a random block mask. Implies `jigsaw=True`.
        jigsaw_permutation (`torch.LongTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
            A gather index: the token placed at position `i` comes from position `jigsaw_permutation[..., i]`.
        """
        outputs: MJPViTModelOutput = self.vit(
            pixel_values,
            jigsaw=jigsaw,
            jigsaw_mask=jigsaw_mask,
            jigsaw_permutation=jigsaw_permutation,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            **kwargs,
        )
        # Copied from transformers.models.vit.modeling_vit.ViTForImageClassification.forward
        sequence_output = outputs.last_hidden_state
        pooled_output = sequence_output[:, 0, :]
        logits = self.classifier(pooled_output)
        # End of copy

        # A training signal: inference outputs hold no loss. With labels the loss is the training objective, in eval
        # mode as well.
        localization_loss = None
        if self.training or labels is not None:
            localization_loss = self.vit.localization_loss(outputs.jigsaw_mask, batch_size=logits.shape[0])
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
