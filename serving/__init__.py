"""Online serving: the gRPC API (`serving.v1`, generated from
`protos/serving/v1/serving.proto`), its server (`serving.server`) and its
Python client (`serving.client`). Import the one you need; this package
imports nothing itself, so a client never loads the server's dependencies."""
