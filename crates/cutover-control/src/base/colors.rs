//! The one seam between the data plane's `Color` and the store's (and fleet documents'): the
//! store keeps its own enum so that it depends on no networking crate.

use cutover_proxy::Color;

pub(crate) fn stored(c: Color) -> cutover_store::Color {
    match c {
        Color::Blue => cutover_store::Color::Blue,
        Color::Green => cutover_store::Color::Green,
    }
}

pub(crate) fn routed(c: cutover_store::Color) -> Color {
    match c {
        cutover_store::Color::Blue => Color::Blue,
        cutover_store::Color::Green => Color::Green,
    }
}

pub(crate) fn fleet_color(c: Color) -> cutover_fleet::doc::Color {
    match c {
        Color::Blue => cutover_fleet::doc::Color::Blue,
        Color::Green => cutover_fleet::doc::Color::Green,
    }
}

pub(crate) fn from_fleet(c: cutover_fleet::doc::Color) -> Color {
    match c {
        cutover_fleet::doc::Color::Blue => Color::Blue,
        cutover_fleet::doc::Color::Green => Color::Green,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colors_round_trip_with_the_same_text() {
        for c in Color::ALL {
            assert_eq!(routed(stored(c)), c);
            assert_eq!(stored(c).as_str(), c.as_str());
        }
    }
}
