//! `<toplevel>/init`: see the library's [`stagehand_stage2::boot`].

fn main() {
    stagehand_stage2::boot::main();
}
