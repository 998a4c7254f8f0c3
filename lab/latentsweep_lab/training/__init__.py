"""Training: the codec's default weights (``codec``), the analysis-transform adapters (``adapters``,
``trace``), the learned descriptor (``descriptor``) and the synthetic formation recipes they learn
from (``formation``)."""
