"""Tensors on the wire and a plan's release terms, without TensorFlow (hand-built site computations)."""

from __future__ import annotations

import numpy as np
import pytest

from tffprod.protocol.protos import array_pb2, data_type_pb2
from tffprod.protocol import release_pb2
from tffprod.protocol.signature import SignatureError, SiteSignature
from tffprod.protocol.tensors import TensorError, check, from_array_proto, from_numpy, to_array_proto, to_numpy
from tffprod.protocol.terms import ReleaseTerms, TermsError

from tests.helpers.site_plans import computation_entry, site_computation


@pytest.mark.parametrize("value", [
    np.float32(0.5), np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5, -2.0], np.float64),
    np.array([[1, -2]], np.int64), np.int32(-7), np.array([True, False]), np.float16(0.25),
    np.array([0.5, 2.0], np.float16), np.array([b"a", b"\xff"], dtype=object), np.bytes_(b"dp_event"),
])
def test_tensors_round_trip_through_the_wire_and_the_workers_array_format(value):
    tensor = from_numpy(value)
    back = to_numpy(release_pb2.Tensor.FromString(tensor.SerializeToString()))
    again = to_numpy(from_array_proto(to_array_proto(tensor, array_pb2, data_type_pb2), data_type_pb2))
    expected = np.asarray(value).astype(object) if tensor.dtype == "string" else np.asarray(value)
    for got in (back, again):
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("tensor, message", [
    (dict(dtype="float64", shape=[2], content=bytes(16)), r"expected float32\[2\], got float64\[2\]"),
    (dict(dtype="float32", shape=[3], content=bytes(12)), r"expected float32\[2\], got float32\[3\]"),
    (dict(dtype="float32", shape=[2], content=bytes(9)), "expected 8 bytes of float32, got 9"),
    (dict(dtype="float32", shape=[2], content=np.array([1, np.inf], np.float32).tobytes()), "not finite"),
    (dict(dtype="float32", shape=[2], content=bytes(8), strings=[b"x"]), "expected 8 bytes"),
])
def test_a_tensor_that_is_not_exactly_what_is_declared_is_refused(tensor, message):
    with pytest.raises(TensorError, match=message):
        check(release_pb2.Tensor(**tensor), "float32", (2,), "state w")


def test_the_signature_lists_state_and_result_leaves_with_paths():
    signature = SiteSignature(site_computation())
    assert [leaf.describe() for leaf in signature.state] == ["w float32[2]", "lr float32[]"]
    assert [leaf.describe() for leaf in signature.result] == ["0 float32[2]"]
    with pytest.raises(SignatureError, match="not a function"):
        SiteSignature(site_computation().__class__())  # an empty computation
    wrong = site_computation()
    del wrong.type.function.parameter.struct.element[1]
    with pytest.raises(SignatureError, match="not <state@SERVER, client_data@CLIENTS>"):
        SiteSignature(wrong)
    value = signature.argument([from_numpy(np.ones(2, np.float32)), from_numpy(np.float32(0.1))], [b"/data/a"])
    server, clients = value.struct.element
    assert server.name == "state" and server.value.federated.type.placement.value.uri == "server"
    assert list(clients.value.federated.value[0].array.string_list.value) == [b"/data/a"]


def _terms(**entry_changes) -> ReleaseTerms:
    comp = site_computation()
    entry = computation_entry(comp)
    entry.update(entry_changes)
    return ReleaseTerms(entry, comp.SerializeToString(deterministic=True))


def test_the_site_fills_in_pinned_leaves_whatever_the_caller_believes():
    terms = _terms()
    assert [leaf.path for leaf in terms.free] == ["w"]
    state = terms.full_state([from_numpy(np.array([3.0, 4.0], np.float32))])
    assert to_numpy(state[1]) == pytest.approx(0.1)  # the plan's learning rate
    with pytest.raises(TensorError, match="has 1 free tensors, got 2"):  # a caller cannot send 'lr'
        terms.full_state([from_numpy(np.zeros(2, np.float32)), from_numpy(np.float32(100.0))])


def test_the_bound_is_clients_times_the_clip():
    terms = _terms()
    assert terms.check_result([from_numpy(np.array([0.6, 0.8], np.float32))], clients=1) == pytest.approx(1.0)
    assert terms.check_result([from_numpy(np.array([1.2, 1.6], np.float32))], clients=2) == pytest.approx(2.0)
    with pytest.raises(TensorError, match=r"norm 2 exceeds the plan's bound 1 \(1 client"):
        terms.check_result([from_numpy(np.array([1.2, 1.6], np.float32))], clients=1)


@pytest.mark.parametrize("changes, message", [
    (dict(state=None), "has no release terms"),
    (dict(state={"free": [], "pinned": [{"path": "lr", "dtype": "float32", "shape": [], "value": 0.1}]}),
     "state leaf w is neither free nor pinned"),
    (dict(state={"free": ["w"], "pinned": [{"path": "lr", "dtype": "int64", "shape": [], "value": 1}]}),
     "pinned state lr: declared int64"),
    (dict(state={"free": ["w"], "pinned": [{"path": "lr", "dtype": "float32", "shape": [], "value": "fast"}]}),
     "its value is not float32"),
    (dict(state={"free": ["w", "lr"], "pinned": [{"path": "clip", "dtype": "float32", "shape": [], "value": 1}]}),
     "pinned clip is not in its state"),
    (dict(bound={"result": ["9"], "l2_norm_per_client": 1.0}), "names no result leaf"),
    (dict(bound={"result": ["0"], "l2_norm_per_client": -1.0}), "is not positive"),
    (dict(bound={"result": ["0"]}), "needs 'result' and 'l2_norm_per_client'"),
])
def test_terms_that_do_not_fit_the_computation_are_refused(changes, message):
    with pytest.raises(TermsError, match=message):
        _terms(**changes)


def test_one_client_holding_every_reference_gets_them_all_in_one_member():
    from tests.helpers.site_plans import STRING, _tensor

    computation = site_computation()
    computation.type.function.parameter.struct.element[1].value.federated.member.CopyFrom(_tensor(STRING, -1))
    signature = SiteSignature(computation)
    assert signature.one_client and not SiteSignature(site_computation()).one_client
    state = [from_numpy(np.ones(2, np.float32)), from_numpy(np.float32(0.1))]
    _, clients = signature.argument(state, [b"/data/u0", b"/data/u1", b"/data/u2"]).struct.element
    (member,) = clients.value.federated.value
    assert list(member.array.string_list.value) == [b"/data/u0", b"/data/u1", b"/data/u2"]
    assert list(member.array.shape.dim) == [3]
    per_client = SiteSignature(site_computation()).argument(state, [b"/data/u0", b"/data/u1"])
    assert len(per_client.struct.element[1].value.federated.value) == 2
    matrix = site_computation()
    matrix.type.function.parameter.struct.element[1].value.federated.member.CopyFrom(_tensor(STRING, -1, 2))
    with pytest.raises(SignatureError, match="one client's strings"):
        SiteSignature(matrix)
