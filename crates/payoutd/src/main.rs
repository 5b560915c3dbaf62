fn main() -> anyhow::Result<()> {
    payoutd::cli::main()
}
