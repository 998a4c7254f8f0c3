"""Training: the codec's default weights (``codec``), the SFMA adapters of the analysis transforms
(``adapters``), channel pricing for the oracle bound (``trace``), the learned descriptor
(``descriptor``) and the synthetic formation recipes they learn from (``formation``)."""
