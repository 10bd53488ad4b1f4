//! The `mock-model` binary: a stand-in OpenAI-compatible model server (see the `mock-model` crate).
fn main() {
    mock_model::main_with_args(clap::Parser::parse())
}
