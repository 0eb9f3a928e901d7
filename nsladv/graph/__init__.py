"""Natural graph neighbors: a similarity graph, and each sample's neighbors in the batch.

NSL's graph regularization joins each sample to similar samples and asks the
model to agree with itself along those edges. This package

- builds the graph from embeddings (raw features, a pretrained encoder's
  outputs or a model's penultimate layer) with NSL's own graph builder,
  `nsl.tools.build_graph_from_config` (cosine similarity, optional LSH), or
  takes a user's weighted edge list or NSL TSV file (`Graph`; graph.py);
- knows NSL's packed format (`NL_nbr_<j>_<feature>`, `NL_nbr_<j>_weight`) in
  one place, and reads and writes it with NSL's `pack_nbrs` (packed.py);
- attaches each sample's top neighbors to a tf.data pipeline in that format,
  looked up per batch from one in-memory copy of the features instead of
  copied into every example (`NeighborTable`; table.py).

`nsladv.wrap(model, graph=nsladv.GraphRegularization(...))` then adds the graph
term, alone or with the adversarial one.

Example:

```python
graph = nsladv.graph.build_graph(nsladv.graph.embed(images), similarity_threshold=0.9)
table = nsladv.graph.NeighborTable(graph, images, max_neighbors=3, feature_name="image")
train = table.dataset(labeled_rows, labels, batch_size=32, training=True)
model = nsladv.wrap(base, multiplier=0.0, graph=nsladv.GraphRegularization(multiplier=0.1))
```
"""

from nsladv.graph.graph import Graph
from nsladv.graph.graph import build_graph
from nsladv.graph.graph import embed
from nsladv.graph.graph import neighbor_purity
from nsladv.graph.graph import penultimate
from nsladv.graph.packed import PackedFormat
from nsladv.graph.packed import pack_nbrs
from nsladv.graph.packed import packed_dataset
from nsladv.graph.table import NeighborTable
from nsladv.graph.table import semi_supervised_rows

__all__ = [
    "Graph",
    "NeighborTable",
    "PackedFormat",
    "build_graph",
    "embed",
    "neighbor_purity",
    "pack_nbrs",
    "packed_dataset",
    "penultimate",
    "semi_supervised_rows",
]
