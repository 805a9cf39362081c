"""The node's listeners other than the web app: BERT-RPC, the Redis protocol, and the HTTP
server under the app."""
