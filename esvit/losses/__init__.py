"""Losses: view-level (DINO) and region-level (EsViT), combined with their centres in EsViTLoss."""

from esvit.losses.esvit_loss import EsViTLoss, LossParts, teacher_temp_schedule
from esvit.losses.region import match_regions, region_loss
from esvit.losses.view import view_loss

__all__ = ["EsViTLoss", "LossParts", "teacher_temp_schedule", "match_regions", "region_loss", "view_loss"]
