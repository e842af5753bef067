mod generation;
mod kernel;
mod qemu;
mod store;
mod tree;
mod workspace;

fn main() {}
