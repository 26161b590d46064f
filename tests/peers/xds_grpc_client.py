"""gRPC's own xDS client (Python grpcio) against our ADS server.

Usage: GRPC_XDS_BOOTSTRAP=bootstrap.json python xds_grpc_client.py xds:///<name> <n>

Calls /ratings.Ratings/Get <n> times with a hand-encoded RatingRequest
(field 1, product = "p") and prints a JSON object counting the replies'
`served_by` (RatingReply field 3), or {"error": "..."} on the first
failed call. No generated stubs: the messages are raw bytes.
"""

import json
import sys

import grpc


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def served_by(reply):
    i = 0
    while i < len(reply):
        key, i = varint(reply, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(reply, i)
        elif wire == 2:
            length, i = varint(reply, i)
            if field == 3:
                return reply[i : i + length].decode()
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return ""


def main():
    target, n = sys.argv[1], int(sys.argv[2])
    counts = {}
    with grpc.insecure_channel(target) as channel:
        get = channel.unary_unary("/ratings.Ratings/Get")
        for _ in range(n):
            try:
                reply = get(b"\x0a\x01p", timeout=20)
            except grpc.RpcError as e:
                print(json.dumps({"error": f"{e.code()}: {e.details()}", "counts": counts}))
                return
            name = served_by(reply)
            counts[name] = counts.get(name, 0) + 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
