"""Models: timm backbones with the EsViT conventions, DINO heads, the student/teacher network."""

from esvit.models.backbones import ARCHS, Backbone
from esvit.models.esvit import EsViTNet, GroupOutput, LastLayers
from esvit.models.heads import DINOHead

__all__ = ["ARCHS", "Backbone", "EsViTNet", "GroupOutput", "LastLayers", "DINOHead"]
