//! `/init` in the initrd: see the library's [`stagehand_stage1::boot`].

fn main() {
    stagehand_stage1::boot::main();
}
