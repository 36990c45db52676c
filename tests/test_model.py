"""IntTower model specification: the building blocks against numpy versions of the paper's formulas,
the serving decomposition, train/inference mode, the CIR edge cases, every switch, and the
parameter count."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from conftest import (all_finite, random_features, random_labels, randomize_parameters, softmax,
                      split_features, tiny_config)
from features import input_names
from model import IntTower, MethodCell
from module import BatchNorm, CIRLoss, LightSE, maxsim_candidates, maxsim_score, mean_over_last
from networks import TOWER_MODELS, build_network, inference_copy
from serving import by_head, numpy_scores

TOL = dict(rtol=1e-5, atol=1e-5)


class FirstUserLayer(nn.Cell):
    """The user tower's first layer output: what BatchNorm and Dropout act on."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, *features):
        return self.net.user_tower(*features)[1]


# 1. building blocks against the paper's formulas

def test_lightse_matches_numpy_field_attention():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(5, 4, 8)).astype(np.float32)
    lightse = LightSE(4)
    lightse.excitation.bias.set_data(Tensor(rng.normal(size=4).astype(np.float32)))
    weight, bias = lightse.excitation.weight.asnumpy(), lightse.excitation.bias.asnumpy()

    attention = softmax(embeddings.mean(axis=-1) @ weight.T + bias)
    expected = embeddings + embeddings * attention[..., None]

    np.testing.assert_allclose(lightse(Tensor(embeddings)).asnumpy(), expected, **TOL)


class InputGradient(nn.Cell):
    """A norm's output and the gradient of a weighted sum of it with respect to its input."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm
        self.grad = ms.grad(self.weighted_sum, grad_position=0)

    def weighted_sum(self, x):
        return (self.norm(x) * ops.arange(x.shape[1]).astype(ms.float32)).sum()

    def construct(self, x):
        return self.norm(x), self.grad(x)


def test_batchnorm_computes_what_mindspore_batchnorm1d_computes(execution_mode):
    """Hand-written for speed, it must stay nn.BatchNorm1d: outputs, input gradients and moving
    statistics in training; outputs with the moving statistics in inference."""
    rng = np.random.default_rng(4)
    x = Tensor(rng.normal(2.0, 3.0, size=(64, 7)).astype(np.float32))
    ours, reference = BatchNorm(7), nn.BatchNorm1d(7)
    for norm in (ours, reference):
        norm.gamma.set_data(Tensor(rng.uniform(0.5, 1.5, 7).astype(np.float32)))
        norm.beta.set_data(Tensor(rng.normal(size=7).astype(np.float32)))
    reference.gamma.set_data(ours.gamma.data)
    reference.beta.set_data(ours.beta.data)
    cells = InputGradient(ours), InputGradient(reference)
    for cell in cells:
        cell.set_train(True)
    for _ in range(2):  # moving statistics after two updates
        (out, grad), (ref_out, ref_grad) = (cell(x) for cell in cells)
        np.testing.assert_allclose(out.asnumpy(), ref_out.asnumpy(), **TOL)
        np.testing.assert_allclose(grad.asnumpy(), ref_grad.asnumpy(), rtol=1e-4, atol=1e-4)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(getattr(ours, name).asnumpy(), getattr(reference, name).asnumpy(), **TOL)
    ours.set_train(False)
    reference.set_train(False)
    np.testing.assert_allclose(ours(x).asnumpy(), reference(x).asnumpy(), **TOL)


def test_inference_folds_batchnorm_into_dense_without_changing_the_function(schema, execution_mode):
    config = tiny_config()
    net = randomize_parameters(IntTower(schema, config))
    user_features, _ = split_features(config, random_features(schema, config, batch=16))
    net.set_train(False)
    folded = MethodCell(net, "user_heads")(*user_features).asnumpy()

    class Unfolded(nn.Cell):  # the user heads with every layer run cell by cell, no folding
        def __init__(self, net):
            super().__init__()
            self.net = net

        def construct(self, *features):
            tower = self.net.user_tower
            fields = ()
            for embedding, ids in zip(tower.embeddings, features[:tower.sparse_num]):
                fields = fields + (embedding(ids),)
            embedded = tower.lightse(ops.stack(fields, axis=1))
            x = ops.concat((embedded.reshape(embedded.shape[0], -1), ops.stack(features[tower.sparse_num:], axis=1)), 1)
            x = tower.input_norm(x)
            layers = (x,)
            for layer in tower.layers:
                x = layer(x)
                layers = layers + (x,)
            return self.net.user_heads_from_layers(layers)

    unfolded = Unfolded(net)
    unfolded.set_train(False)
    np.testing.assert_allclose(folded, unfolded(*user_features).asnumpy(), **TOL)


@pytest.mark.parametrize("switch", [{}, {"fe_source": "inputs"}, {"input_norm": False}],
                         ids=["default", "fe_inputs", "no_input_norm"])
def test_an_inference_copy_folds_batchnorm_once_and_computes_the_same_function(schema, switch):
    config = tiny_config(**switch)
    net = randomize_parameters(IntTower(schema, config))
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    copy = inference_copy(net, schema, config)
    features = random_features(schema, config, batch=16)
    net.set_train(False)
    np.testing.assert_allclose(copy(*features).asnumpy(), net(*features).asnumpy(), **TOL)
    user_features, _ = split_features(config, features)
    np.testing.assert_allclose(MethodCell(copy, "user_heads")(*user_features).asnumpy(),
                               MethodCell(net, "user_heads")(*user_features).asnumpy(), **TOL)
    assert all(np.array_equal(p.asnumpy(), before[p.name]) for p in net.get_parameters())  # the original is kept
    assert copy.user_tower.folded and not net.user_tower.folded


def test_field_means_match_numpy():
    x = np.random.default_rng(5).normal(size=(3, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(mean_over_last(Tensor(x)).asnumpy(), x.mean(axis=-1), **TOL)


def test_maxsim_score_sums_over_user_heads_the_best_item_head_dot_product():
    rng = np.random.default_rng(2)
    user_heads = rng.normal(size=(6, 12, 4)).astype(np.float32)
    item_heads = rng.normal(size=(6, 4, 4)).astype(np.float32)

    expected = np.einsum("bud,bvd->buv", user_heads, item_heads).max(axis=2).sum(axis=1)

    np.testing.assert_allclose(maxsim_score(Tensor(user_heads), Tensor(item_heads)).asnumpy(), expected, **TOL)


@pytest.mark.parametrize("heads_per_item", [1, 4])
def test_maxsim_candidates_scores_one_user_against_many_items(heads_per_item):
    rng = np.random.default_rng(3)
    user_heads = rng.normal(size=(12, 4)).astype(np.float32)
    item_heads = rng.normal(size=(30, heads_per_item, 4)).astype(np.float32)

    expected = np.einsum("ud,nvd->nuv", user_heads, item_heads).max(axis=2).sum(axis=1)

    np.testing.assert_allclose(maxsim_candidates(Tensor(user_heads), Tensor(item_heads)).asnumpy(), expected,
                               **TOL)


def numpy_cir(user_rep, item_rep, labels, temperature):
    positive = labels == 1
    if not positive.any():
        return 0.0
    users = user_rep[positive] / np.linalg.norm(user_rep[positive], axis=1, keepdims=True)
    items = item_rep[positive] / np.linalg.norm(item_rep[positive], axis=1, keepdims=True)
    logits = users @ items.T / temperature
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    return -np.mean(np.diag(log_softmax))


@pytest.mark.parametrize("positives", [1, 5, 16])
def test_cir_loss_is_infonce_over_the_positive_rows(positives):
    rng = np.random.default_rng(4)
    user_rep = rng.normal(size=(16, 8)).astype(np.float64)
    item_rep = rng.normal(size=(16, 8)).astype(np.float64)
    labels = random_labels(16, positives, seed=positives)

    loss = CIRLoss(0.07)(Tensor(user_rep, ms.float32), Tensor(item_rep, ms.float32), labels)

    expected = numpy_cir(user_rep, item_rep, labels.asnumpy(), 0.07)
    np.testing.assert_allclose(loss.asnumpy(), expected, **TOL)


# 2. genres padding

def test_genres_padding_width_and_position_do_not_change_the_output(schema):
    config = tiny_config()
    net = randomize_parameters(IntTower(schema, config))
    net.set_train(False)
    features = random_features(schema, config, batch=8)
    genres_at = input_names(config).index("genres")
    genres = features[genres_at].asnumpy()

    wider = np.concatenate([genres, np.zeros((8, 3), np.int32)], axis=1)
    shuffled = np.random.default_rng(5).permuted(wider, axis=1)   # padding now in different positions
    expected = net(*features).asnumpy()
    for variant in (wider, shuffled):
        features[genres_at] = Tensor(variant)
        np.testing.assert_allclose(net(*features).asnumpy(), expected, rtol=1e-6, atol=1e-6)


# 3. the serving decomposition

@pytest.mark.parametrize("model", TOWER_MODELS)
def test_full_model_equals_scorer_on_tower_outputs(schema, execution_mode, model):
    config = tiny_config(model=model)
    net = randomize_parameters(build_network(schema, config))
    features = random_features(schema, config, batch=10)
    user_features, item_features = split_features(config, features)
    cells = (net, MethodCell(net, "user_heads"), MethodCell(net, "item_heads"), MethodCell(net, "score_candidates"))
    for cell in cells:
        cell.set_train(False)
    _, user_heads, item_heads, score_candidates = cells

    user_h = user_heads(*user_features)
    item_h = item_heads(*item_features)
    expected = ops.sigmoid(maxsim_score(user_h, item_h) + net.bias).asnumpy()
    np.testing.assert_allclose(net(*features).asnumpy(), expected, **TOL)

    # user 3 against every item of the batch, through the full model and through the candidate scorer
    user = 3
    repeated_user = [Tensor(np.repeat(f.asnumpy()[user:user + 1], 10, axis=0)) for f in user_features]
    np.testing.assert_allclose(score_candidates(user_h[user], item_h).asnumpy(),
                               net(*repeated_user, *item_features).asnumpy(), **TOL)


# 4. train / inference mode

def test_dropout_is_random_in_training_and_off_in_inference(schema, execution_mode):
    config = tiny_config(keep_rate=0.5)
    tower_output = FirstUserLayer(IntTower(schema, config))
    user_features, _ = split_features(config, random_features(schema, config, batch=32))

    tower_output.set_train(True)
    first, second = tower_output(*user_features).asnumpy(), tower_output(*user_features).asnumpy()
    assert not np.allclose(first, second)

    tower_output.set_train(False)
    np.testing.assert_array_equal(tower_output(*user_features).asnumpy(), tower_output(*user_features).asnumpy())


def test_batchnorm_uses_batch_statistics_and_updates_moving_ones_only_in_training(schema, execution_mode):
    config = tiny_config(keep_rate=1.0)
    net = IntTower(schema, config)
    tower_output = FirstUserLayer(net)
    user_features, _ = split_features(config, random_features(schema, config, batch=32))
    first_rows = [f[:8] for f in user_features]
    moving_mean = net.user_tower.input_norm.moving_mean

    tower_output.set_train(False)
    before = moving_mean.asnumpy().copy()
    inference = tower_output(*user_features).asnumpy()
    # inference normalises with the moving statistics: a row's output does not depend on its batch
    np.testing.assert_allclose(tower_output(*first_rows).asnumpy(), inference[:8], **TOL)
    np.testing.assert_array_equal(moving_mean.asnumpy(), before)

    tower_output.set_train(True)
    training = tower_output(*user_features).asnumpy()
    assert not np.allclose(training, inference)
    assert not np.allclose(tower_output(*first_rows).asnumpy(), training[:8])   # batch statistics
    assert not np.allclose(moving_mean.asnumpy(), before)


# 5. CIR edge cases

@pytest.mark.parametrize("positives", [0, 1, 16])
def test_cir_total_loss_and_gradients_are_finite_for_any_number_of_positives(schema, positives):
    config = tiny_config()
    net = IntTower(schema, config)
    net.set_train(True)
    features = random_features(schema, config, batch=16)
    labels = random_labels(16, positives)

    _, user_rep, item_rep = net.logits_and_representations(*features)
    cir, cir_grads = ms.value_and_grad(net.cir, grad_position=(0, 1))(user_rep, item_rep, labels)
    loss, grads = ms.value_and_grad(net.loss, None, net.trainable_params())(labels, *features)

    assert all_finite([cir, *cir_grads, loss, *grads])
    if positives == 0:
        assert cir.asnumpy() == 0.0


# 6. every switch

SWITCHES = {
    "default": {},
    "two_tower": {"model": "two_tower"},
    "no_lightse": {"use_lightse": False},
    "no_item_lightse": {"item_lightse": False},
    "no_input_norm": {"input_norm": False},
    "fe_inputs": {"fe_source": "inputs"},
    "fe_inputs_last": {"fe_source": "inputs", "fe_layers": "last"},
    "fe_linear": {"user_fe_activation": "none"},
    "fe_layers_last": {"fe_layers": "last"},
    "no_cir": {"cir_weight": 0.0},
    "no_genres": {"use_genres": False},
    "other_shape": {"mlp_layers": [12, 10, 6], "head_num": 2, "feblock_size": 8},
    "l2_embedding": {"l2_embedding": 1e-4},
    "init_mindspore": {"init": "mindspore"},
    "init_pytorch": {"init": "pytorch"},
}


def test_published_initialisations_start_every_layer_as_the_published_codes_do(schema):
    """--init mindspore: MindSpore 1.8's Dense default, Normal(0.01) weights and zero biases, for
    every Dense; --init pytorch: Normal(1e-4) embeddings and tower layer weights, the FE projections
    at the framework's uniform fan-in default."""
    config = tiny_config(mlp_layers=[256, 128], feblock_size=256)
    published = {init: {p.name: p.asnumpy() for p in build_network(schema, tiny_config(
        mlp_layers=[256, 128], feblock_size=256, init=init)).get_parameters()} for init in ("mindspore", "pytorch")}
    dense = [name for name in published["mindspore"] if name.endswith(".weight") and "embedding" not in name]
    assert any("user_fe" in name for name in dense) and any("layers" in name for name in dense)
    for name in dense:
        weight = published["mindspore"][name]
        assert np.abs(weight).max() < 0.06, name  # within 6 standard deviations
        assert weight.size < 1000 or (abs(weight.std() - 0.01) < 0.001 and abs(weight.mean()) < 0.001), name
        np.testing.assert_array_equal(published["mindspore"][name[:-len("weight")] + "bias"], 0.0)
    for name, value in published["pytorch"].items():
        if "embedding_table" in name or (".layers." in name and name.endswith(".0.weight")):
            # the std of a small table (gender: 3 rows) is too loose an estimate to test
            assert value.size < 1000 or abs(value.std() - 1e-4) < 1e-5, name
            assert np.abs(value).max() < 6e-4, name
        elif name.startswith(("user_fe", "item_fe")) and name.endswith(".weight"):
            bound = 1 / np.sqrt(value.shape[1])  # uniform fan-in (HeUniform with a = sqrt(5))
            assert np.abs(value).max() <= bound and value.std() > bound / 3, name
    default = {p.name: p.asnumpy() for p in build_network(schema, config).get_parameters()}
    assert abs(default["user_fe.0.weight"].std() - config.fe_init_std) < 0.003


# the switches that change what the network computes (the initialisations change only where it
# starts: test_published_initialisations_start_every_layer_as_the_published_codes_do)
COMPUTING_SWITCHES = {name: switch for name, switch in SWITCHES.items() if "init" not in switch}


@pytest.mark.parametrize("switch", COMPUTING_SWITCHES.values(), ids=COMPUTING_SWITCHES.keys())
def test_every_switch_builds_predicts_and_gives_every_weight_a_gradient(schema, switch):
    config = tiny_config(**switch)
    net = build_network(schema, config)
    features = random_features(schema, config, batch=16)
    assert len(features) == len(input_names(config))

    net.set_train(False)
    probability = net(*features).asnumpy()
    assert probability.shape == (16,) and ((probability > 0) & (probability < 1)).all()

    net.set_train(True)
    params = net.trainable_params()
    loss, grads = ms.value_and_grad(net.loss, None, params)(random_labels(16, 6), *features)

    assert all_finite([loss, *grads])
    # Without genres the item Light-SE sees one field: softmax over it is 1, out = 2E for any
    # weights, so those weights get no gradient.
    inert = "item_tower.lightse." if not config.use_genres else "-"
    weights = [g for p, g in zip(params, grads) if p.name.endswith(".weight") and not p.name.startswith(inert)]
    assert weights and all(np.abs(g.asnumpy()).max() > 0 for g in weights)


def test_switches_change_the_heads_the_model_scores(schema):
    def head_shapes(**switch):
        config = tiny_config(**switch)
        net = build_network(schema, config)
        user_features, item_features = split_features(config, random_features(schema, config, batch=3))
        return net.user_heads(*user_features).shape, net.item_heads(*item_features).shape

    assert head_shapes() == ((3, 2 * 4, 4), (3, 4, 4))            # 2 layers x 4 heads of 16 / 4
    assert head_shapes(fe_layers="last") == ((3, 4, 4), (3, 4, 4))
    assert head_shapes(fe_source="inputs") == ((3, 2 * 4, 4), (3, 4, 4))   # x0 and h1 instead of h1 and h2
    assert head_shapes(model="two_tower") == ((3, 1, 8), (3, 1, 8))   # the last layers, one head


@pytest.mark.parametrize("source,activation", [("outputs", "relu"), ("inputs", "none")])
def test_user_heads_project_the_layer_outputs_or_inputs_with_or_without_relu(schema, source, activation):
    config = tiny_config(fe_source=source, user_fe_activation=activation)
    net = randomize_parameters(IntTower(schema, config))
    net.set_train(False)
    user_features, _ = split_features(config, random_features(schema, config, batch=5))
    x0, h1, h2 = (t.asnumpy() for t in net.user_tower(*user_features))
    projected = (h1, h2) if source == "outputs" else (x0, h1)
    expected = []
    for dense, tensor in zip(net.user_fe, projected):
        out = tensor @ dense.weight.asnumpy().T + dense.bias.asnumpy()
        expected.append((np.maximum(out, 0) if activation == "relu" else out).reshape(5, 4, 4))
    heads = net.user_heads(*user_features).asnumpy()
    np.testing.assert_allclose(heads, np.concatenate(expected, axis=1), **TOL)
    assert (heads < 0).any() == (activation == "none")


# 7. parameter count

def expected_parameter_counts(schema, config):
    """(trainable, total) from the architecture; BatchNorm moving mean/variance are not trainable."""
    vocab, dim, layers = schema["vocab"], config.sparse_embedding_dim, config.mlp_layers

    def tower(vocab_sizes, dense_num, lightse):
        fields = len(vocab_sizes)
        inputs = fields * dim + dense_num
        trainable = sum(vocab_sizes) * dim
        trainable += (fields * fields + fields) if config.use_lightse and lightse else 0
        trainable += 2 * inputs if config.input_norm else 0
        moving = 2 * inputs if config.input_norm else 0
        for size in layers:
            trainable += inputs * size + size + 2 * size
            moving += 2 * size
            inputs = size
        return trainable, moving

    user = tower([vocab[n] for n in ("user_id", "gender", "age", "occupation")], 1, True)
    item = tower([vocab["movie_id"]] + ([vocab["genres"]] if config.use_genres else []), 1, config.item_lightse)
    trainable = user[0] + item[0] + 1                                  # + the bias
    if config.model == "inttower":
        user_input = 4 * dim + 1
        projected = layers if config.fe_source == "outputs" else [user_input] + layers[:-1]  # widths of h1..hL or x0..h(L-1)
        fe_layers = projected if config.fe_layers == "all" else projected[-1:]
        trainable += sum(size * config.feblock_size + config.feblock_size for size in fe_layers + [layers[-1]])
    return trainable, trainable + user[1] + item[1]


@pytest.mark.parametrize("switch", SWITCHES.values(), ids=SWITCHES.keys())
def test_parameter_count_matches_the_architecture(schema, switch):
    config = tiny_config(**switch)
    net = build_network(schema, config)

    trainable = sum(p.size for p in net.trainable_params())
    total = sum(p.size for p in net.get_parameters())

    assert (trainable, total) == expected_parameter_counts(schema, config)


@pytest.mark.parametrize("user_heads", [1, 12, 20])
def test_the_numpy_scorer_computes_what_the_mindspore_scorer_computes(user_heads):
    """serving.numpy_scores on the item-head-first index (and the zero heads it pads with) gives the
    scores of model.maxsim_candidates + bias, for one head (the tower baselines) and for several."""
    rng = np.random.default_rng(3)
    users, items = rng.normal(size=(user_heads, 8)).astype(np.float32), rng.normal(size=(50, 4, 8)).astype(np.float32)
    expected = ops.sigmoid(maxsim_candidates(Tensor(users), Tensor(items)) + 0.3).asnumpy()
    by_head_items = by_head(items)
    np.testing.assert_allclose(numpy_scores(users, by_head_items, 0.3), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numpy_scores(users, by_head_items[:, :7], 0.3), expected[:7], rtol=1e-5, atol=1e-6)
