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
    __slots__ = ("plan_id", "role", "round", "datasets", "state")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    role: str
    round: int
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetSelection]
    state: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, plan_id: _Optional[str] = ..., role: _Optional[str] = ..., round: _Optional[int] = ..., datasets: _Optional[_Iterable[_Union[DatasetSelection, _Mapping]]] = ..., state: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

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
