// Empty on purpose: each layer's `_layer_check` shared object is this file plus the whole static
// library of that layer, linked with --no-undefined against only the layers it may depend on
// (CMakeLists.txt, gemma_layer). A call into any other folder leaves a symbol undefined there.
