"""The site agent, run at the school behind NAT: its config, spool, uploads and granted throughput tests."""
