from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "content", "strings")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    strings: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ..., strings: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DatasetSelection(_message.Message):
    __slots__ = ("name", "clients")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    clients: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., clients: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("plan_id", "role", "round", "datasets", "state", "secagg")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    role: str
    round: int
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetSelection]
    state: _containers.RepeatedCompositeFieldContainer[Tensor]
    secagg: SecAggInput
    def __init__(self, plan_id: _Optional[str] = ..., role: _Optional[str] = ..., round: _Optional[int] = ..., datasets: _Optional[_Iterable[_Union[DatasetSelection, _Mapping]]] = ..., state: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., secagg: _Optional[_Union[SecAggInput, _Mapping]] = ...) -> None: ...

class SecAggRound(_message.Message):
    __slots__ = ("plan_id", "round", "participants")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    round: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, plan_id: _Optional[str] = ..., round: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ...) -> None: ...

class SecAggAdvertisement(_message.Message):
    __slots__ = ("name", "index", "context", "s_public", "c_public", "signature", "certificate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    S_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    C_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    context: bytes
    s_public: bytes
    c_public: bytes
    signature: bytes
    certificate: bytes
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., context: _Optional[bytes] = ..., s_public: _Optional[bytes] = ..., c_public: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class SecAggShareRequest(_message.Message):
    __slots__ = ("round", "advertisements")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    round: SecAggRound
    advertisements: _containers.RepeatedCompositeFieldContainer[SecAggAdvertisement]
    def __init__(self, round: _Optional[_Union[SecAggRound, _Mapping]] = ..., advertisements: _Optional[_Iterable[_Union[SecAggAdvertisement, _Mapping]]] = ...) -> None: ...

class SecAggEncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "nonce", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SecAggShareResponse(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggEncryptedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggEncryptedShare, _Mapping]]] = ...) -> None: ...

class SecAggInput(_message.Message):
    __slots__ = ("round", "survivors", "shares")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round: SecAggRound
    survivors: _containers.RepeatedScalarFieldContainer[str]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggEncryptedShare]
    def __init__(self, round: _Optional[_Union[SecAggRound, _Mapping]] = ..., survivors: _Optional[_Iterable[str]] = ..., shares: _Optional[_Iterable[_Union[SecAggEncryptedShare, _Mapping]]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("round", "dropped", "survivors")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    round: SecAggRound
    dropped: _containers.RepeatedScalarFieldContainer[str]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[_Union[SecAggRound, _Mapping]] = ..., dropped: _Optional[_Iterable[str]] = ..., survivors: _Optional[_Iterable[str]] = ...) -> None: ...

class SecAggUnmaskResponse(_message.Message):
    __slots__ = ("name", "b_shares", "s_shares")
    class BSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class SSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    B_SHARES_FIELD_NUMBER: _ClassVar[int]
    S_SHARES_FIELD_NUMBER: _ClassVar[int]
    name: str
    b_shares: _containers.ScalarMap[str, bytes]
    s_shares: _containers.ScalarMap[str, bytes]
    def __init__(self, name: _Optional[str] = ..., b_shares: _Optional[_Mapping[str, bytes]] = ..., s_shares: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("result", "round", "repeat", "release_id")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    result: _containers.RepeatedCompositeFieldContainer[Tensor]
    round: int
    repeat: bool
    release_id: str
    def __init__(self, result: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., round: _Optional[int] = ..., repeat: bool = ..., release_id: _Optional[str] = ...) -> None: ...

class ReleaseChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ReleaseRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[ReleaseRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
