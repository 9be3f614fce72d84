fn main() {
    println!("hello from tiny-repo");
}
