"""The node's listeners other than the web app: BERT-RPC, and the HTTP server under the app."""
