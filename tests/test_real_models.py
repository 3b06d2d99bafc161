"""Every kernel of real models is sliced as docs/slicing.md's table says.

The models are every `keras.applications` constructor (weights=None, no top,
the smallest input each accepts) and keras-hub backbones built from their
constructors (BERT, GPT-2, Llama with grouped-query attention, Gemma, ViT).
`regularize` must take every kernel whose matrices are more than one vector, and `slice_errors` must equal a numpy
reference on the matrices that the rule written here gives, from the kernel's
layer alone. Kernels that this rule and their shape make alike (the blocks of
a stage) are checked against the reference once, and every other one must be
planned exactly as that one was: `slice_errors` computes the same function of
the values for the same plan. (The Grams of every kernel of the 27 alike
blocks of ConvNeXtXLarge's third stage made its check 53 s on 2 cores; 13 s
so.) All models run on TensorFlow; the other backends walk a subset, to keep
CI inside its time.
"""

import re

import keras
import numpy as np
import pytest
import reference
from backends import BACKEND, to_numpy

import keras_ortho
from keras_ortho import ops as ortho_ops

# The real-model sweeps belong to the full suite (`pytest -m slow`), not the default one.
pytestmark = pytest.mark.slow

L = keras.layers

APPLICATIONS = sorted(name for name in dir(keras.applications) if name[0].isupper())
# The smallest square input each accepts without its top; 32 for all others.
SMALLEST = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
# One model per kind of rule on JAX and PyTorch: one matrix (ResNet50), per channel (MobileNetV2), per group
# (ConvNeXtTiny), per head (BERT), grouped-query heads (Llama). Building a model and planning each new kernel
# shape cost JAX's eager mode a compilation each: EfficientNetB0 alone took 71 s there on 2 cores.
ON_EVERY_BACKEND = {"ResNet50", "MobileNetV2", "ConvNeXtTiny", "bert", "llama"}

# Each weight a layer uses as a matrix of weights, by the attribute that holds it.
KERNEL_ATTRIBUTES = ("kernel", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")


def rule(layer, attribute, shape):
    """The slicing table of docs/slicing.md, as a kind for `reference.slices_by`."""
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)) or attribute == "depthwise_kernel":
        return ("axis", len(shape) - 2)  # per channel
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) and layer.groups > 1:
        return ("groups", layer.groups)
    if isinstance(layer, L.EinsumDense) and len(shape) == 3:
        # Each matrix maps the last contracted axis to the last kept one; the third indexes them.
        inputs, output = re.fullmatch(r"(.+),(.+)->(.+)", layer.equation.replace(" ", "")).group(2, 3)
        kept = [i for i, letter in enumerate(inputs) if letter in output]
        contracted = [i for i, letter in enumerate(inputs) if letter not in output]
        (heads,) = set(range(3)) - {kept[-1], contracted[-1]}
        return ("axis", heads)
    return ("matrix",)


def kernels(model):
    """`[(layer, attribute, variable)]` for each trainable floating kernel in the model."""
    found = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for attribute in KERNEL_ATTRIBUTES:
            variable = getattr(layer, attribute, None)
            if isinstance(variable, keras.Variable) and variable.trainable and len(variable.shape) >= 2:
                if any(v is variable for v in layer._trainable_variables):  # its own, not a sublayer's
                    found.append((layer, attribute, variable))
    return found


def single_vectors(layer, attribute, variable):
    """Whether each of the kernel's matrices (by the table) is one row or one column: `regularize` leaves it out."""
    shape = tuple(variable.shape)
    matrices = reference.slices_by(np.zeros(shape), rule(layer, attribute, shape))
    return min(matrices[0].shape) == 1


def check_every_kernel(model):
    regularizer = keras_ortho.OrthoRegularizer(1.0)
    paths = keras_ortho.regularize(model, regularizer)
    found = kernels(model)
    taken = [v for layer, attribute, v in found if not single_vectors(layer, attribute, v)]
    assert len(taken) > 0 and len(paths) == len(set(paths)) == len(taken)
    assert all(v.regularizer is regularizer for v in taken)
    assert all(v.regularizer is None for _, _, v in found if not any(v is t for t in taken))
    kinds = set()
    checked = {}  # (kind, shape) -> the plan of the kernel checked against the reference
    for layer, attribute, variable in found:
        shape = tuple(variable.shape)
        kind = rule(layer, attribute, shape)
        kinds.add(kind[0])
        plan = ortho_ops.prepare(variable, None, "auto")[1]  # what slice_errors slices it by
        if (kind, shape) in checked:
            assert plan == checked[kind, shape], (variable.path, kind, plan, checked[kind, shape])
            continue
        checked[kind, shape] = plan
        matrices = reference.slices_by(to_numpy(variable), kind)
        expected = np.array([np.abs(reference.residual(m, "auto")).sum() for m in matrices])
        got = to_numpy(keras_ortho.slice_errors(variable))
        assert got.shape == (len(matrices),), (variable.path, kind)
        # float32 Grams: each entry is off by about its float32 rounding, at most ~1e-6 of |P|^2.
        rounding = 1e-5 * np.array([np.square(m).sum() for m in matrices])
        bad = np.abs(got - expected) > 1e-3 * expected + rounding
        assert not bad.any(), (variable.path, kind, got[bad], expected[bad])
    return kinds


def application(name):
    size = SMALLEST.get(name, 32)
    return getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(size, size, 3))


def backend_marks(name):
    if name in ON_EVERY_BACKEND:
        return []
    return [
        pytest.mark.skipif(
            BACKEND != "tensorflow", reason="all models on TensorFlow; a subset on the others, for CI's time"
        )
    ]


def test_the_walk_covers_every_application():
    assert len(APPLICATIONS) >= 40 and {"ConvNeXtTiny", "EfficientNetB0", "ResNet50"} <= set(APPLICATIONS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=backend_marks(n)) for n in APPLICATIONS])
def test_every_kernel_of_a_keras_application_follows_its_layer_rule(name):
    keras.utils.set_random_seed(0)
    kinds = check_every_kernel(application(name))
    if name.startswith("ConvNeXt"):
        assert "groups" in kinds  # its depthwise convolutions are Conv2D(groups=channels)
    if name.startswith(("MobileNet", "EfficientNet")):
        assert "axis" in kinds  # DepthwiseConv2D per channel


def hub_backbone(name):
    keras_hub = pytest.importorskip("keras_hub")  # the test extra installs it
    models = keras_hub.models
    small = {"vocabulary_size": 64, "num_layers": 2, "hidden_dim": 16, "intermediate_dim": 32}
    if name == "bert":
        return models.BertBackbone(num_heads=2, max_sequence_length=8, **small)
    if name == "gpt2":
        return models.GPT2Backbone(num_heads=2, max_sequence_length=8, **small)
    if name == "llama":
        return models.LlamaBackbone(num_query_heads=4, num_key_value_heads=2, **small)
    if name == "gemma":
        return models.GemmaBackbone(num_query_heads=4, num_key_value_heads=2, head_dim=4, **small)
    return models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )


@pytest.mark.filterwarnings("ignore:regularize")  # their configs cannot carry regularizers (tested elsewhere)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=backend_marks(n)) for n in ["bert", "gpt2", "llama", "gemma", "vit"]]
)
def test_every_kernel_of_a_keras_hub_backbone_follows_its_layer_rule(name):
    keras.utils.set_random_seed(0)
    kinds = check_every_kernel(hub_backbone(name))
    assert "axis" in kinds  # per head
