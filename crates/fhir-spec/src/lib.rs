//! FHIR R4 and JP definitions embedded in iryo: type model, search parameters, compartments, structural checks.
