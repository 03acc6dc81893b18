"""DICOM node (``hires dicom-node``): receive series from a scanner or PACS, enhance them through
the pipeline and send the derived series back, with nothing lost across restarts.

rules (routing), config (rules file and flags), scp (receiving), queue (SQLite), worker (enhance,
send with back-off), send (C-STORE SCU), tls, node (running it), cli. See docs/dicom-node.md.
"""
