"""The architecture search (``--search-arch``, docs/ARCHSEARCH.md): the space, the latency
table, the greedy search and its finalists."""
