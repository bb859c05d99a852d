"""DVC stage entry points: parse paths, load params, call one library function, write outputs."""
