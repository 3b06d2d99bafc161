"""The messages `docs/troubleshooting.md` quotes are the messages the code gives.

Each case makes the code raise or warn, and the page's quote of that message
must be found in it: its literal fragments in order, with the quote's
placeholders (`...`, `N`, `M`, a quoted name) standing for whatever the
message holds there.
"""

import pathlib
import re
import warnings

import keras
import numpy as np
import pytest

import keras_ortho

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
# A table row's first cell: a message in single or double backticks.
QUOTE = re.compile(r"^\| (`+)(.+?)\1", re.M)
PLACEHOLDER = re.compile(r"\.\.\.|\bN\b|\bM\b|'[^']*'|\[\.\.\.\]")


def quote_starting(prefix):
    quotes = [match[2] for match in QUOTE.finditer(PAGE.read_text()) if match[2].startswith(prefix)]
    assert len(quotes) == 1, f"{PAGE.name} should quote one message starting {prefix!r}; it quotes {quotes}"
    return quotes[0]


def fragments(quote):
    """The literal parts of a quote, between its placeholders."""
    return [part.strip() for part in PLACEHOLDER.split(quote) if part.strip()]


def test_fragments_split_a_quote_at_its_placeholders():
    assert fragments("regularize: N of the M kernels regularized in 'model' belong to ...") == [
        "regularize:",
        "of the",
        "kernels regularized in",
        "belong to",
    ]


def raised(call, error):
    with pytest.raises(error) as caught:
        call()
    return str(caught.value)


def warned(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    assert len(caught) >= 1, "expected a warning"
    return "\n".join(str(w.message) for w in caught)


def dense_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")], name="model")
    return model


def activity_regularized():
    layer = keras.layers.Dense(3, activity_regularizer=keras_ortho.OrthoRegularizer())
    model = keras.Sequential([keras.Input((4,)), layer])
    model(np.ones((2, 4), "float32"))


def wide_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(10, name="wide")], name="model")


def backbone_regularized():
    import keras_hub  # the test extra installs it

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=6
    )
    keras_ortho.regularize(backbone, keras_ortho.OrthoRegularizer(0.01))


def few_carrying():
    layers = [
        keras.layers.Dense(4, kernel_regularizer=keras_ortho.OrthoRegularizer() if i == 0 else None) for i in range(8)
    ]
    model = keras.Sequential([keras.Input((4,)), *layers], name="model")
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((2, 4)), np.zeros((2, 4)), verbose=0, callbacks=[keras_ortho.OrthoLogger()])


CASES = {
    "OrthoLogger: only N of the M kernels": lambda: warned(few_carrying),
    "lipschitz_bound cannot bound layer": lambda: raised(
        lambda: keras_ortho.lipschitz_bound(
            keras.Sequential([keras.Input((4,)), keras.layers.LayerNormalization(name="norm")])
        ),
        ValueError,
    ),
    "Argument `mode`: a 3x8 slice": lambda: raised(
        lambda: keras_ortho.OrthoConstraint(mode="columns")(np.ones((3, 8), "float32")), ValueError
    ),
    "Argument `constraint`: OrthoConstraint": lambda: raised(
        lambda: keras_ortho.constrain(wide_model(), keras_ortho.OrthoConstraint(mode="columns")), ValueError
    ),
    "OrthoRegularizer(mode='columns') on weight": lambda: warned(
        lambda: keras_ortho.regularize(wide_model(), keras_ortho.OrthoRegularizer(mode="columns"))
    ),
    "Argument `iterations` counts": lambda: raised(lambda: keras_ortho.OrthoConstraint(iterations=3), ValueError),
    "OrthoRegularizer config has unknown key(s)": lambda: raised(
        lambda: keras_ortho.OrthoRegularizer.from_config({"factor": 0.1, "scale": 2}), ValueError
    ),
    "Argument `model`:": lambda: raised(
        lambda: keras_ortho.regularize(keras.Sequential([keras.layers.Dense(3)]), keras_ortho.OrthoRegularizer()),
        ValueError,
    ),
    "regularize: N of the M kernels": lambda: warned(backbone_regularized),
    "Argument `factor` must be": lambda: raised(lambda: keras_ortho.OrthoRegularizer("0.1"), TypeError),
    "Argument `mode` must be one of": lambda: raised(lambda: keras_ortho.OrthoRegularizer(mode="diag"), ValueError),
    "Argument `slice_axis` must be": lambda: raised(lambda: keras_ortho.OrthoRegularizer(slice_axis="0"), TypeError),
    "keras_ortho needs a weight of rank": lambda: raised(
        lambda: keras_ortho.OrthoRegularizer()(np.ones(3, "float32")), ValueError
    ),
    "Argument `source` must be": lambda: raised(lambda: keras_ortho.plot_errors([1, 2]), TypeError),
    "regularize: no kernel of": lambda: warned(
        lambda: keras_ortho.regularize(dense_model(), keras_ortho.OrthoRegularizer(), include="nothing*")
    ),
    "OrthoRegularizer is a weight regularizer": lambda: raised(activity_regularized, Exception),
    "regularize: every kernel of": lambda: warned(
        lambda: keras_ortho.regularize(
            keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="out")], name="model"),
            keras_ortho.OrthoRegularizer(),
        )
    ),
}


@pytest.mark.parametrize("prefix", sorted(CASES))
def test_the_page_quotes_the_message_as_the_code_gives_it(prefix):
    message = CASES[prefix]()
    position = 0
    for fragment in fragments(quote_starting(prefix)):
        found = message.find(fragment, position)
        assert found >= 0, f"{PAGE.name} quotes {fragment!r}, which the message does not hold in order: {message!r}"
        position = found + len(fragment)
