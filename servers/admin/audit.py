"""AdminService.ListAuditRecords: protobuf <-> the audit log of this process's database."""

from __future__ import annotations

import json

from google.protobuf import struct_pb2
from google.protobuf.json_format import Parse
from google.protobuf.timestamp_pb2 import Timestamp

from core.data.database import Database
from core.errors import FailedPreconditionError, UnavailableError
from core.resources.audit_log import AuditLog, AuditQuery, AuditRecord
from core.runtime.container import Container
from core.runtime.lifecycle import Status
from core.timestamps import checked_datetime as _time
from mesh.admin.v1 import admin_pb2


class AuditRecords:
    """Reads the audit log of the container's database, found when first asked for."""

    def __init__(self, container: Container) -> None:
        self._container = container
        self._log: AuditLog | None = None

    async def list(
        self, request: admin_pb2.ListAuditRecordsRequest
    ) -> admin_pb2.ListAuditRecordsResponse:
        query = AuditQuery(
            resource=request.resource,
            principal=request.principal,
            start=_time(request.start_time, "start_time")
            if request.HasField("start_time")
            else None,
            end=_time(request.end_time, "end_time") if request.HasField("end_time") else None,
        )
        records, token = await self._audit_log().page(
            query, size=request.page_size, token=request.page_token
        )
        return admin_pb2.ListAuditRecordsResponse(
            records=[to_proto(r) for r in records], next_page_token=token
        )

    def _audit_log(self) -> AuditLog:
        if self._log is None:
            try:
                database = self._container.get(Database)
            except LookupError:
                raise FailedPreconditionError(
                    "this process has no database, so no audit log", reason="NO_AUDIT_LOG"
                ) from None
            self._log = AuditLog(database)
        # The admin service answers while the process starts; its database may not yet.
        if self._log.db.status != Status.RUNNING:
            raise UnavailableError("the database is not running yet", reason="DATABASE_NOT_READY")
        return self._log


def to_proto(record: AuditRecord) -> admin_pb2.AuditRecord:
    time = Timestamp()
    time.FromDatetime(record.time)
    return admin_pb2.AuditRecord(
        id=record.id,
        time=time,
        principal=record.principal,
        method=record.method,
        action=record.action,
        request_id=record.request_id,
        resource=record.resource,
        changes=[_change(c) for c in record.changes],
    )


def _change(change: dict[str, object]) -> admin_pb2.FieldChange:
    message = admin_pb2.FieldChange(field=str(change["field"]), secret=bool(change.get("secret")))
    if not message.secret:
        message.old_value.CopyFrom(_value(change.get("old")))
        message.new_value.CopyFrom(_value(change.get("new")))
    return message


def _value(value: object) -> struct_pb2.Value:
    return Parse(json.dumps(value), struct_pb2.Value())
