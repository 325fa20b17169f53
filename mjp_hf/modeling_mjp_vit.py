"""PyTorch MJP-ViT: a transformers ViT trained with Masked Jigsaw Puzzle position embeddings.

Data flows one way: pixels -> patch tokens -> jigsaw (a block of patch tokens permuted among itself) -> position
embeddings (the shuffled positions get one learnable *unknown* position embedding) -> ViT layers -> heads -> losses.
Beside it, the *dense absolute localization regressor* (DALR) regresses every kept position's (row, col) from its
position embedding, which keeps the embeddings spatially meaningful; its weighted L1 error is the *localization loss*
(`localization_loss`).

At inference nothing is shuffled and the model computes exactly what a `ViTForImageClassification` holding the same
weights computes; `to_vit()` returns that model.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import ViTForImageClassification, ViTModel
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTLayer, ViTPooler, ViTPreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_mjp_vit import MJPViTConfig, pair, patch_grid
from .jigsaw import (
    draw_jigsaw,
    permutation_within_mask,
    permute_patch_pixels,
    random_pixel_permutation,
    shuffle_tokens,
)


# Checkpoints of stock ViTs on the Hub use the transformers 4 key names; transformers renames them on load only for
# the classes it knows. Registering our model type gives MJP-ViT the same renaming, so ViT/DeiT weights load.
for _name in ("mjp_vit", "MJPViTModel", "MJPViTForImageClassification"):
    # By class name too: a config read from a stock ViT folder carries `model_type: vit`.
    register_checkpoint_conversion_mapping(_name, get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)


@dataclass
class MJPViTModelOutput(BaseModelOutputWithPooling):
    r"""
    localization_loss (`torch.FloatTensor` of shape `()`, *optional*):
        The DALR loss, already multiplied by `dalr_loss_weight`; present in training mode when the model has a DALR
        head (a classifier also computes it when given `labels`).
    jigsaw_mask (`torch.BoolTensor` of shape `(batch_size or 1, num_patches)`, *optional*):
        `True` at the patch positions the jigsaw selected (their tokens were permuted among themselves); one row for
        the whole batch or one per sample. `None` when no jigsaw ran.
    """

    localization_loss: torch.FloatTensor | None = None
    jigsaw_mask: torch.BoolTensor | None = None


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


def _check_permutation(permutation: torch.LongTensor) -> None:
    """Raise if a row of a given gather index is not a permutation of `0 .. num_patches - 1`. This reads the tensor
    on the host, which only a caller-given permutation pays: drawn ones are permutations by construction."""
    num_patches = permutation.shape[-1]
    expected = torch.arange(num_patches, device=permutation.device)
    bad_rows = (permutation.sort(dim=-1).values != expected).any(-1).nonzero().flatten().tolist()
    if bad_rows:
        row = permutation[bad_rows[0]]
        out_of_range = row[(row < 0) | (row >= num_patches)].tolist()
        problem = (
            f"values out of range {out_of_range[:8]}"
            if out_of_range
            else f"repeated values {sorted(set(row[row.bincount(minlength=num_patches)[row] > 1].tolist()))[:8]}"
        )
        raise ValueError(
            f"jigsaw_permutation row {bad_rows[0]} is not a permutation of 0..{num_patches - 1} ({problem}); pass "
            "each position exactly once, e.g. `torch.randperm(num_patches)` or the identity outside the mask."
        )


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


class MJPViTEmbeddings(ViTEmbeddings):
    """ViT embeddings with the jigsaw on patch tokens, the unknown position embedding and the DALR head.

    Permuting patch tokens after the (stride = kernel) patch embedding is exactly permuting pixel patches before it,
    and cheaper. `position_embeddings` keeps the stock ViT shape `[1, 1 + num_patches, hidden]`; the unknown
    position embedding is a separate `[1, 1, hidden]` parameter.
    """

    def __init__(self, config: MJPViTConfig):
        super().__init__(config, use_mask_token=False)
        self.config = config
        self.grid_size, _ = patch_grid(config)
        self.unk_position_embedding = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.applies_unk_position_embedding else None
        )
        self.dalr_head = MJPViTDALRHead(config) if config.dalr_head != "none" else None
        # The DALR's regression targets, built once rather than at every step.
        self.register_buffer("dalr_target_grid", self._grid_targets(), persistent=False)
        # Training-time schedule, set by `MJPViTPreTrainedModel.set_mjp_schedule`. The loss weight is a tensor so
        # that changing it every epoch never recompiles a compiled model.
        self.jigsaw_enabled = True
        self.register_buffer("dalr_loss_weight", torch.tensor(float(config.dalr_loss_weight)), persistent=False)
        # Source of the jigsaw's randomness; `None` draws from torch's default generator of the input's device.
        self.jigsaw_generator: torch.Generator | None = None

    def _check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> None:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (batch_size, num_channels, height, width), got {tuple(pixel_values.shape)}."
            )
        batch_size, num_channels, height, width = pixel_values.shape
        if batch_size == 0:
            raise ValueError(
                f"pixel_values holds no image (shape {tuple(pixel_values.shape)}); pass a batch of at least one."
            )
        if num_channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {num_channels} channels but the model expects {self.config.num_channels} "
                "(config.num_channels). Convert the images (e.g. `image.convert('RGB')`) or preprocess them with the "
                "model's image processor."
            )
        patch_h, patch_w = pair(self.patch_size)
        if height < patch_h or width < patch_w:
            raise ValueError(
                f"The images ({height}*{width}) are smaller than one patch ({patch_h}*{patch_w}); resize them to the "
                f"model's {self.image_size[0]}*{self.image_size[1]} with its image processor."
            )
        if not interpolate_pos_encoding and (height, width) != tuple(self.image_size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size[0]}*{self.image_size[1]}). "
                "Resize the images with the model's image processor, or pass `interpolate_pos_encoding=True` to "
                "interpolate the position embeddings."
            )

    def _draw_jigsaw(self, batch_size, grid_size, device, probability: float = 1.0):
        config = self.config
        num_masks = batch_size if config.jigsaw_per_sample else 1
        return draw_jigsaw(
            config, num_masks, grid_size, probability=probability, generator=self.jigsaw_generator, device=device
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        jigsaw: bool | None = False,
        jigsaw_mask: torch.BoolTensor | None = None,
        jigsaw_permutation: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, torch.BoolTensor | None]:
        """Return the embedded sequence `[batch, 1 + num_patches, hidden]` and the jigsaw mask (or `None`).

        `jigsaw=True` always shuffles; `None` is the training step's jigsaw: in training mode a coin flip with
        `config.jigsaw_prob` (probability 0 while the schedule has the jigsaw off), in eval mode none.
        """
        self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        batch_size, _, height, width = pixel_values.shape
        patch_size = pair(self.patch_size)
        grid_size = (height // patch_size[0], width // patch_size[1])
        naive = self.config.jigsaw_mode == "naive"
        probability = 1.0
        if jigsaw is None:
            jigsaw = self.training
            probability = self.config.jigsaw_prob if self.jigsaw_enabled else 0.0

        if jigsaw and jigsaw_mask is None and jigsaw_permutation is None:
            jigsaw_mask, jigsaw_permutation = self._draw_jigsaw(
                batch_size, grid_size, pixel_values.device, probability
            )
        elif jigsaw:
            jigsaw_mask, jigsaw_permutation = self._check_given_jigsaw(
                jigsaw_mask, jigsaw_permutation, batch_size, grid_size
            )
        if jigsaw and naive:
            pixel_permutation = random_pixel_permutation(patch_size, self.jigsaw_generator, pixel_values.device)
            permuted = permute_patch_pixels(pixel_values, patch_size, pixel_permutation)
            # Samples whose step lost the coin flip (an empty row) keep their pixels in place too.
            jigsawed = jigsaw_mask.any(-1).view(-1, 1, 1, 1)
            pixel_values = torch.where(jigsawed, permuted, pixel_values)

        patch_tokens = self.patch_embeddings(pixel_values)
        if jigsaw:
            patch_tokens = shuffle_tokens(patch_tokens, jigsaw_permutation)
        embeddings = torch.cat((self.cls_token.expand(batch_size, -1, -1), patch_tokens), dim=1)

        if interpolate_pos_encoding:
            position_embeddings = self.interpolate_pos_encoding(embeddings, height, width)
        else:
            position_embeddings = self.position_embeddings
        if jigsaw and self.unk_position_embedding is not None:
            patch_position_embeddings = torch.where(
                jigsaw_mask.unsqueeze(-1), self.unk_position_embedding, position_embeddings[:, 1:]
            )
            cls_position_embedding = position_embeddings[:, :1].expand(patch_position_embeddings.shape[0], -1, -1)
            position_embeddings = torch.cat((cls_position_embedding, patch_position_embeddings), dim=1)

        embeddings = self.dropout(embeddings + position_embeddings)
        return embeddings, (jigsaw_mask if jigsaw else None)

    def _check_given_jigsaw(self, jigsaw_mask, jigsaw_permutation, batch_size, grid_size):
        num_patches = grid_size[0] * grid_size[1]
        for name, value in (("jigsaw_mask", jigsaw_mask), ("jigsaw_permutation", jigsaw_permutation)):
            if value is not None and (
                value.ndim != 2 or value.shape[0] not in (1, batch_size) or value.shape[1] != num_patches
            ):
                raise ValueError(
                    f"{name} must have shape (batch_size or 1, num_patches) = ({batch_size} or 1, {num_patches}) for a "
                    f"{grid_size[0]}x{grid_size[1]} patch grid, got {tuple(value.shape)}."
                )
        if jigsaw_mask is not None and jigsaw_mask.dtype != torch.bool:
            raise ValueError(f"jigsaw_mask must be a bool tensor, got {jigsaw_mask.dtype}.")
        if jigsaw_permutation is not None and jigsaw_permutation.dtype != torch.long:
            raise ValueError(f"jigsaw_permutation must be a long (int64) tensor, got {jigsaw_permutation.dtype}.")
        if jigsaw_permutation is None:
            jigsaw_permutation = permutation_within_mask(jigsaw_mask, self.jigsaw_generator)
        elif not torch.compiler.is_compiling():  # a compiled step must not leave its graph to read the tensor
            _check_permutation(jigsaw_permutation)
        if jigsaw_mask is None:
            jigsaw_mask = jigsaw_permutation != torch.arange(num_patches, device=jigsaw_permutation.device)
        return jigsaw_mask, jigsaw_permutation

    def _grid_targets(self) -> torch.Tensor:
        grid_h, grid_w = self.grid_size
        index = torch.arange(grid_h * grid_w)
        targets = torch.stack((index // grid_w, index % grid_w), dim=-1).float()
        if self.config.dalr_normalize_targets:
            targets = targets / torch.tensor([grid_h, grid_w], dtype=targets.dtype)
        return targets

    def dalr_targets(self) -> torch.Tensor:
        """The (row, col) of every patch position of the position-embedding table, `[num_patches, 2]` (float32)."""
        return self.dalr_target_grid.float()

    def localization_loss(self, jigsaw_mask: torch.BoolTensor | None) -> torch.Tensor:
        """Weighted mean L1 error of the DALR over the positions whose own embedding was used.

        Shuffled positions that carry the unknown embedding are left out. With per-sample masks every
        (sample, position) pair counts once, so the loss is the mean over all kept pairs, as one batch-wide mask
        would give. The head reads the position-embedding table, never the image.
        """
        predictions = self.dalr_head(self.position_embeddings[0, 1:]).float()
        targets = self.dalr_targets()
        uses_unk = jigsaw_mask is not None and self.unk_position_embedding is not None
        if uses_unk and jigsaw_mask.shape[-1] == targets.shape[0]:
            errors = (predictions - targets).abs().sum(-1)
            kept = (~jigsaw_mask).sum(0).to(errors.dtype)
            loss = (errors * kept).sum() / (2 * kept.sum()).clamp(min=1)
        else:
            loss = nn.functional.l1_loss(predictions, targets)
        return loss * self.dalr_loss_weight


@auto_docstring
class MJPViTPreTrainedModel(ViTPreTrainedModel):
    config: MJPViTConfig
    config_class = MJPViTConfig
    _no_split_modules = ["MJPViTEmbeddings", "ViTLayer"]
    # The stock transformers class `to_vit()` exports to.
    _vit_class = ViTModel

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MJPViTEmbeddings):
            if module.unk_position_embedding is not None:
                init.trunc_normal_(module.unk_position_embedding, mean=0.0, std=self.config.initializer_range)
            init.constant_(module.dalr_loss_weight, float(self.config.dalr_loss_weight))
            init.copy_(module.dalr_target_grid, module._grid_targets())

    @property
    def mjp_embeddings(self) -> MJPViTEmbeddings:
        return self.base_model.embeddings

    def set_mjp_schedule(self, *, jigsaw_enabled: bool | None = None, dalr_loss_weight: float | None = None) -> None:
        """Set the training schedule: whether the jigsaw may run at all (it is off during the released warmup),
        and the current DALR loss weight. `config` keeps the base values."""
        embeddings = self.mjp_embeddings
        if jigsaw_enabled is not None:
            embeddings.jigsaw_enabled = bool(jigsaw_enabled)
        if dalr_loss_weight is not None:
            embeddings.dalr_loss_weight.fill_(float(dalr_loss_weight))

    def to_vit(self) -> ViTModel | ViTForImageClassification:
        """The stock transformers ViT holding a copy of this model's weights, without the unknown position
        embedding and the DALR head: it computes exactly this model's inference outputs and saves as a
        `model_type: vit` checkpoint that any transformers release and serving stack can load."""
        vit_config = self.config.to_vit_config()
        state_dict = {
            key: value.detach().clone()
            for key, value in self.state_dict().items()
            if ".unk_position_embedding" not in key and ".dalr_head." not in key
        }
        with torch.device("meta"):
            vit = self._vit_class(vit_config, **self._vit_init_kwargs())
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


# `ViTModel` builds its own `ViTEmbeddings` and runs its layers inline, taking no jigsaw arguments and returning no
# DALR loss, so the encoder cannot be inherited without building a throwaway embedding; its two methods are adapted
# copies, marked so that a diff against upstream shows drift.
@auto_docstring
class MJPViTModel(MJPViTPreTrainedModel):
    # Adapted from transformers.models.vit.modeling_vit.ViTModel.__init__ with ViTEmbeddings->MJPViTEmbeddings, no
    # mask token
    def __init__(self, config: MJPViTConfig, add_pooling_layer: bool = True):
        r"""
        add_pooling_layer (bool, *optional*, defaults to `True`):
            Whether to add a pooling layer
        """
        super().__init__(config)
        self.config = config
        self.embeddings = MJPViTEmbeddings(config)
        self.layers = nn.ModuleList([ViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    def _vit_init_kwargs(self) -> dict:
        return {"add_pooling_layer": self.pooler is not None}

    # Adapted from transformers.models.vit.modeling_vit.ViTModel.forward with bool_masked_pos->jigsaw,
    # jigsaw_mask, jigsaw_permutation; the output adds the DALR loss and the jigsaw mask
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
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        given = jigsaw_mask is not None or jigsaw_permutation is not None
        if given and jigsaw is False:
            raise ValueError("jigsaw=False contradicts the jigsaw_mask/jigsaw_permutation passed; drop one of them.")
        if given:
            jigsaw = True

        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)

        embedding_output, jigsaw_mask = self.embeddings(
            pixel_values,
            jigsaw=jigsaw,
            jigsaw_mask=jigsaw_mask,
            jigsaw_permutation=jigsaw_permutation,
            interpolate_pos_encoding=bool(interpolate_pos_encoding),
        )
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
        )
        hidden_states = embedding_output
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)

        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        # The DALR loss is a training signal: inference outputs carry no loss.
        localization_loss = (
            self.embeddings.localization_loss(jigsaw_mask)
            if self.training and self.embeddings.dalr_head is not None
            else None
        )
        return MJPViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            localization_loss=localization_loss,
            jigsaw_mask=jigsaw_mask,
        )


@auto_docstring(
    custom_intro="""
    MJP-ViT with an image classification head on the final [CLS] token: trained with the masked jigsaw puzzle and
    the DALR loss, identical to `ViTForImageClassification` at inference.
    """
)
class MJPViTForImageClassification(MJPViTPreTrainedModel):
    _vit_class = ViTForImageClassification

    # Copied from transformers.models.vit.modeling_vit.ViTForImageClassification.__init__ with ViTModel->MJPViTModel
    def __init__(self, config: MJPViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = MJPViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    # Adapted from transformers.models.vit.modeling_vit.ViTForImageClassification.forward with the jigsaw arguments
    # passed through; the loss adds the DALR loss
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
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])

        loss = classification_loss = None
        localization_loss = outputs.localization_loss
        if labels is not None:
            classification_loss = self.loss_function(labels, logits, self.config, **kwargs)
            loss = classification_loss
            if localization_loss is None and self.vit.embeddings.dalr_head is not None:
                # With labels the loss is the training objective, in eval mode as well.
                localization_loss = self.vit.embeddings.localization_loss(outputs.jigsaw_mask)
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
    "MJPViTEmbeddings",
    "MJPViTForImageClassification",
    "MJPViTModel",
    "MJPViTModelOutput",
    "MJPViTPreTrainedModel",
]
