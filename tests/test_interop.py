"""timm parity: the same weights give the same features."""

import pytest
import torch

timm = pytest.importorskip("timm")

from vitssl.errors import VitsslError  # noqa: E402
from vitssl.interop import from_timm, to_timm_state_dict  # noqa: E402

CASES = [
    ("vit_tiny_patch16_224", {}, (224, 224)),
    ("vit_small_patch16_224", {"global_pool": "avg"}, (224, 224)),
    ("vit_tiny_patch16_224", {"img_size": (160, 224), "class_token": False,
                              "global_pool": "avg", "fc_norm": False}, (160, 224)),
]


@pytest.mark.parametrize("name,kwargs,size", CASES)
def test_from_timm_matches_forward_features(name, kwargs, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    encoder = from_timm(model).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        theirs = model.forward_features(x)
        ours = encoder.forward_features(x)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        torch.testing.assert_close(encoder.forward_head(ours),
                                   model.forward_head(theirs, pre_logits=True), atol=1e-5, rtol=0)


def test_to_timm_state_dict_round_trips():
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                               img_size=64).eval()
    encoder = from_timm(source)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    target = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                               img_size=64).eval()
    target.load_state_dict(to_timm_state_dict(encoder))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target.forward_features(x), encoder.eval().forward_features(x),
                                   atol=1e-5, rtol=0)


def test_unsupported_timm_features_are_refused():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, reg_tokens=4,
                              img_size=32, patch_size=8)
    with pytest.raises(VitsslError, match="register tokens"):
        from_timm(model)
