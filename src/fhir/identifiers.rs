//! NHS identifiers that carry rules of their own: the NHS number (a check
//! digit) and the ODS organisation code (a format). Parsing them is the only
//! way to get one, so a value of these types is known to be well formed.

use std::fmt;

use thiserror::Error;

/// `Identifier.system` of an NHS number.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// `Identifier.system` of an ODS organisation code.
pub const ODS_ORGANIZATION_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// Why a text is not an NHS number. The messages never repeat the number:
/// they end up in logs and OperationOutcomes.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum NhsNumberError {
    /// Not ten digits (spaces between groups are not allowed in FHIR).
    #[error("an NHS number is exactly 10 digits, with no spaces or other characters")]
    Format,
    /// The Modulus 11 check gives 10: no number is issued with it.
    #[error("the NHS number's first nine digits give a check value of 10, which is never issued")]
    NoValidCheckDigit,
    /// The tenth digit is not the Modulus 11 check digit of the first nine.
    #[error("the NHS number's check digit is wrong (Modulus 11): probably a mistyped digit")]
    CheckDigit,
}

/// A ten-digit NHS number with a valid Modulus 11 check digit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NhsNumber([u8; 10]);

impl NhsNumber {
    /// Parses `text` as an NHS number: ten ASCII digits whose tenth is the
    /// Modulus 11 check digit of the first nine (NHS Data Dictionary:
    /// weights 10 down to 2, check = 11 − (sum mod 11), 11 becomes 0, 10 is
    /// never issued).
    pub fn parse(text: &str) -> Result<Self, NhsNumberError> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(NhsNumberError::Format);
        }
        let mut digits = [0u8; 10];
        for (digit, byte) in digits.iter_mut().zip(bytes) {
            *digit = byte - b'0';
        }
        let sum: u32 = digits[..9]
            .iter()
            .zip((2..=10u32).rev())
            .map(|(&digit, weight)| u32::from(digit) * weight)
            .sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => return Err(NhsNumberError::NoValidCheckDigit),
            check => check,
        };
        if u32::from(digits[9]) != check {
            return Err(NhsNumberError::CheckDigit);
        }
        Ok(Self(digits))
    }

    /// The number as its ten digits.
    pub fn as_string(&self) -> String {
        self.0.iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// Numbers beginning 999 pass the check but are never issued: they are
    /// the test range.
    pub fn is_test_number(&self) -> bool {
        self.0[..3] == [9, 9, 9]
    }
}

impl fmt::Debug for NhsNumber {
    /// Never prints the number: debug output reaches logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(…)")
    }
}

/// Why a text is not an ODS organisation code.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum OdsCodeError {
    /// Wrong length or characters.
    #[error(
        "an ODS organisation code is 3 to 10 upper-case letters and digits (a GP practice's is a letter and five digits, like A81001)"
    )]
    Format,
}

/// An ODS (Organisation Data Service) organisation code, such as a GP
/// practice's `A81001` or a trust's `RXX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OdsCode(String);

impl OdsCode {
    /// Parses `text` as an ODS organisation code: 3 to 10 upper-case ASCII
    /// letters and digits with at least one letter. ODS codes vary by kind
    /// of organisation (GP practices: a letter and five digits; trusts:
    /// three characters; sites: five), so this checks the shape every kind
    /// shares, not that the code is issued.
    pub fn parse(text: &str) -> Result<Self, OdsCodeError> {
        let shape = (3..=10).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && text.bytes().any(|b| b.is_ascii_uppercase());
        if shape {
            Ok(Self(text.to_owned()))
        } else {
            Err(OdsCodeError::Format)
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_nhs_numbers_parse() {
        for number in ["9476719931", "9000000009", "9912003888", "4010232137"] {
            let parsed = NhsNumber::parse(number).expect(number);
            assert_eq!(parsed.as_string(), number);
        }
        assert!(
            NhsNumber::parse("9990000018")
                .expect("test range")
                .is_test_number()
        );
    }

    #[test]
    fn every_single_digit_error_is_caught() {
        // Modulus 11 catches any one mistyped digit.
        let valid = "9476719931";
        for position in 0..10 {
            for replacement in b'0'..=b'9' {
                let mut bytes = valid.as_bytes().to_vec();
                if bytes[position] == replacement {
                    continue;
                }
                bytes[position] = replacement;
                let text = String::from_utf8(bytes).expect("ascii");
                assert!(NhsNumber::parse(&text).is_err(), "{text} accepted");
            }
        }
    }

    #[test]
    fn malformed_nhs_numbers_are_refused() {
        assert_eq!(
            NhsNumber::parse("947 671 9931"),
            Err(NhsNumberError::Format)
        );
        assert_eq!(NhsNumber::parse("947671993"), Err(NhsNumberError::Format));
        assert_eq!(NhsNumber::parse("94767199311"), Err(NhsNumberError::Format));
        assert_eq!(NhsNumber::parse("947671993١"), Err(NhsNumberError::Format));
        assert_eq!(
            NhsNumber::parse("9476719932"),
            Err(NhsNumberError::CheckDigit)
        );
        // 1×10 + 1×2 = 12; 11 − (12 mod 11) = 10: no check digit works.
        assert_eq!(
            NhsNumber::parse("1000000010"),
            Err(NhsNumberError::NoValidCheckDigit)
        );
        assert_eq!(
            format!("{:?}", NhsNumber::parse("9000000009")),
            "Ok(NhsNumber(…))"
        );
    }

    #[test]
    fn ods_codes() {
        for code in ["A81001", "RXX", "Y12345", "8HV48", "RWX0T"] {
            assert_eq!(OdsCode::parse(code).expect(code).as_str(), code);
        }
        for bad in ["a81001", "A8", "A81001-1", "12345", "ABCDEFGHIJK", ""] {
            assert_eq!(OdsCode::parse(bad), Err(OdsCodeError::Format), "{bad}");
        }
    }
}
