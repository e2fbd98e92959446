"""``conduit demo``: a demo site on embedded defaults (``site``) and its simulated SSH device
(``target``). Not for production: the demo keeps its generated logins in clear."""
