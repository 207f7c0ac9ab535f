"""Postgres DSN attacks (review 13): a DSN that passes the TLS policy yet reaches a socket.

``check_dsn`` promises TLS "to a TCP host" because libpq ignores ``sslmode`` on a Unix
socket. In a host list, libpq reads an *empty* item as "the default", which on Unix is
the socket directory (``/var/run/postgresql/.s.PGSQL.<port>``): observed with psycopg,
``host=127.0.0.1,`` tries that socket after the TCP host, ``host=,127.0.0.1`` before it.
A local process that answers on that socket gets the password in the clear.
"""

from __future__ import annotations

import pytest

from assay.core.schema import SecretRef
from assay.relay.errors import DsnRefused
from assay.relay.pgsource import check_dsn

REF = SecretRef(env="RELAY_PG_DSN")
PASSWORD = "hunter2-s3cr3t-pw"


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=,db.example dbname=r user=u password={PASSWORD} sslmode=require",
        f"host=db.example, dbname=r user=u password={PASSWORD} sslmode=verify-full",
        f"host=db.example,,db2.example dbname=r user=u password={PASSWORD} sslmode=require",
        f"postgresql://u:{PASSWORD}@db.example,/r?sslmode=require&host=db.example,",
    ],
    ids=["empty-first", "empty-last", "empty-middle", "uri-empty-item"],
)
def test_empty_item_in_a_host_list_is_a_unix_socket_and_is_refused(dsn: str) -> None:
    with pytest.raises(DsnRefused) as info:
        check_dsn(dsn, REF)
    assert PASSWORD not in info.value.detail
